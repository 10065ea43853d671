# Everything a fresh machine needs: `make demo` (the main job) and `make test` (the whole suite).
# Each target creates .venv, installs the pinned torch, builds the extension (with its CUDA
# kernels when nvcc is found: a compile check on a machine without a GPU) and runs.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
CUDA_HOME ?= /usr/local/cuda
export CUDA_HOME
export PATH := $(CUDA_HOME)/bin:$(PATH)
export MAX_JOBS ?= 2
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export HF_HUB_OFFLINE := 1
TORCH_CMAKE = $(shell $(PY) -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
NVIDIA_DIR = $(shell $(PY) -c "import pathlib, nvidia; print(pathlib.Path(list(nvidia.__path__)[0]))")

.PHONY: demo test build lint pytest ctest bench-check bench clean browser

demo: build
	$(VENV)/bin/lavise-fast demo

test: build lint pytest ctest bench-check

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q setuptools wheel ninja
	LAVISE_FAST_NO_BUILD=1 $(PIP) install -q --no-build-isolation -e '.[dev]'
	touch $@

build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

pytest: build browser
	$(PY) -m pytest tests -q

# Debian's Chromium and ChromeDriver for the report test (Selenium drives /usr/bin/chromium; nothing
# downloads a browser of its own).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; fi

ctest: $(VENV)/.installed
	cmake -S . -B build-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$(TORCH_CMAKE)" -DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) \
	  -DCMAKE_CUDA_COMPILER=$(CUDA_HOME)/bin/nvcc -DCUDA_nvrtc_LIBRARY=$(NVIDIA_DIR)/cu13/lib/libnvrtc.so.13 \
	  -DNVIDIA_WHEEL_DIR=$(NVIDIA_DIR)
	cmake --build build-cmake -j $(MAX_JOBS)
	cd build-cmake && LD_LIBRARY_PATH=$(NVIDIA_DIR)/cu13/lib ctest --output-on-failure

bench-check: build
	$(PY) -m pytest bench --benchmark-disable -q

bench: build
	$(PY) -m pytest bench --benchmark-only --benchmark-autosave $(BENCH_ARGS)

clean:
	rm -rf build build-cmake lavise_fast/*.so
