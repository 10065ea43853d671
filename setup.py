"""Build of lavise_fast._C, the operator library (CPU kernels always, CUDA kernels when possible).

Environment variables:
  LAVISE_FAST_CUDA=0     never build the CUDA kernels
  FORCE_CUDA=1           always build them, and fail if that is impossible
  TORCH_CUDA_ARCH_LIST   GPU architectures (default "8.0;9.0": Ampere and Hopper)
  MAX_JOBS               parallel compile jobs (ninja)
  LAVISE_FAST_NO_BUILD=1 install the Python package without compiling (the Makefile uses this with
                         an editable install, then builds the extension in place with
                         `python setup.py build_ext --inplace`, which ninja keeps incremental)
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # an isolated build environment, or no torch at all
    sys.exit(
        "lavise_fast is compiled against the torch it will run with, and none is importable here.\n"
        "Install torch first, then build without isolation:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation .\n"
        "(a plain `pip install .` builds in an isolated environment that cannot see your torch)"
    )


def nvidia_include_dirs() -> list[str]:
    """Header folders of the nvidia-* wheels (cuBLAS, cuSPARSE, ...) that torch's CUDA headers include."""
    found = []
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        if base.is_dir():
            found += sorted(str(p) for p in base.glob("*/include") if p.is_dir())
    return list(dict.fromkeys(found))


def cuda_decision() -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and why."""
    forced = os.environ.get("FORCE_CUDA", "0") == "1"
    nvcc = cpp_extension.CUDA_HOME and Path(cpp_extension.CUDA_HOME, "bin", "nvcc").exists()
    if forced:
        if torch.version.cuda is None:
            sys.exit("FORCE_CUDA=1 but the installed torch is a CPU-only build: install a CUDA build of torch")
        if not nvcc:
            sys.exit("FORCE_CUDA=1 but nvcc was not found: set CUDA_HOME or put nvcc on PATH")
        return True, "FORCE_CUDA=1"
    if os.environ.get("LAVISE_FAST_CUDA", "1") == "0":
        return False, "LAVISE_FAST_CUDA=0"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if not nvcc:
        return False, "nvcc not found (set CUDA_HOME or FORCE_CUDA=1)"
    return True, f"torch {torch.__version__} has CUDA {torch.version.cuda} and nvcc is at {cpp_extension.CUDA_HOME}"


def extensions():
    with_cuda, why = cuda_decision()
    sources = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/*.cpp"))]
    sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/ops/*.cpp"))]
    sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/ops/cpu/*.cpp"))]
    # No -std flag: BuildExtension adds the standard that the installed torch was built with
    # (C++17 up to torch 2.11, C++20 from 2.13); forcing another one breaks exceptions at run time.
    cxx = ["-O3", "-fopenmp-simd"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is a header: without -fopenmp its `omp parallel` compiles away and every
        # CPU kernel runs on one thread. The libgomp linked here is the one torch has already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    # --fmad=false: no contraction of a*b+c into FMA, so that the math shared with the CPU
    # kernels (bilinear weights, sketch means) rounds the same on both devices.
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "--fmad=false"]
    include_dirs = [str(ROOT / "csrc")]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/ops/cuda/*.cu"))]
        include_dirs += nvidia_include_dirs()
        ext = cpp_extension.CUDAExtension(
            "lavise_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=[("LAVISE_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "lavise_fast._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    print("lavise_fast build configuration:", file=sys.stderr)
    print(f"  torch          {torch.__version__} (CUDA {torch.version.cuda})", file=sys.stderr)
    print(f"  CUDA kernels   {'yes' if with_cuda else 'no'}: {why}", file=sys.stderr)
    if with_cuda:
        print(f"  arch list      {os.environ['TORCH_CUDA_ARCH_LIST']}", file=sys.stderr)
        print(f"  nvidia headers {nvidia_include_dirs() or 'none found'}", file=sys.stderr)
    print(f"  ninja          {shutil.which('ninja') or 'not found (slow serial build)'}", file=sys.stderr)
    print(f"  sources        {len(sources)} files", file=sys.stderr)
    return [ext]


setup(
    packages=find_packages(include=["lavise_fast", "lavise_fast.*"]),
    ext_modules=[] if os.environ.get("LAVISE_FAST_NO_BUILD") == "1" else extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
