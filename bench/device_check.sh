#!/usr/bin/env bash
# One check for a GPU machine (the lent H100/H200 has python3 with a CUDA torch and nvcc):
# builds lavise_fast from source against the machine's own torch, runs the test suite
# (the `cuda` cases included), the benchmarks in check mode, the op report (fused vs reference,
# GB/s against a measured copy bandwidth), the end-to-end sweep (explain against the bare
# forward pass and the official per-filter inference, ResNet-50 layer4 over a few thousand
# random images), a transformer sweep (ViT-B/16's last block), the five ResNet-50 layers in one pass
# and the ONNX head in onnxruntime against the PyTorch head; each report is one markdown table.
# Meant to finish in under 11 minutes on an H100 (estimates, never measured together: build 1-3 min,
# tests 1-3 min, benchmark check 1 min, op report 20 s, sweep 1 min, transformer and five layers up
# to 150 s each, ONNX head 30 s); the long steps are cut off at their *_TIMEOUT.
#   bash bench/device_check.sh            # logs and tables go to $OUT (or /tmp/lavise_device) too
# Every setting below can be overridden from the environment; a dry run of the end-to-end steps on
# a machine without a GPU (the extension already built there):
#   STEPS="sweep onnx" DEVICE=cpu SWEEP_MODEL=resnet18 SWEEP_IMAGES=8 SWEEP_IMAGE_SIZE=64 SWEEP_BATCH=4 \
#     ONNX_VECTORS=256 PYTHON=.venv/bin/python bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lavise_device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PYTHON:-python3}
STEPS=${STEPS:-"build tests bench ops sweep vit layers onnx"}  # the steps to run, of these eight
DEVICE=${DEVICE:-cuda}  # of the op report, the sweep and the ONNX head
# The sweep: 4,096 images at 224 px (2.3 GiB, made in advance on the device) in batches of 128;
# the official inference timed on one filter, (N + 25) ResNet-50 passes of one image (about 5 ms
# each on an H100: 20-30 s), extrapolated to the 2,048 filters.
SWEEP_MODEL=${SWEEP_MODEL:-resnet50}
SWEEP_IMAGES=${SWEEP_IMAGES:-4096}
SWEEP_IMAGE_SIZE=${SWEEP_IMAGE_SIZE:-224}
SWEEP_BATCH=${SWEEP_BATCH:-128}
SWEEP_BASELINE_FILTERS=${SWEEP_BASELINE_FILTERS:-1}
SWEEP_REPEATS=${SWEEP_REPEATS:-3}
SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-180}
# A transformer: torchvision's ViT-B/16, its last block (768 filters on the 14 x 14 patch grid, the class
# token dropped), 2,048 images; and the five ResNet-50 layers CLIP-Dissect explains in one pass, 1,024
# images, with the peak memory at 256 and 1,024 images.
VIT_IMAGES=${VIT_IMAGES:-2048}
LAYERS_IMAGES=${LAYERS_IMAGES:-1024}
EXTRA_TIMEOUT=${EXTRA_TIMEOUT:-150}
# The ONNX head: ResNet-18 layer4's head (512 channels) on 12,800 pooled vectors (512 filters x 25).
ONNX_VECTORS=${ONNX_VECTORS:-12800}
ONNX_CHANNELS=${ONNX_CHANNELS:-512}
ONNX_TIMEOUT=${ONNX_TIMEOUT:-120}
status=0
t0=$(date +%s)
want() { [[ " $STEPS " == *" $1 "* ]]; }
elapsed() { echo "($(( $(date +%s) - $1 )) s; $(( $(date +%s) - t0 )) s since the start)"; }
# Build with the system compiler, whose libstdc++ is the one the Python process loads. Seen on
# the lent H200 image (2026-11-27): its default CC/CXX (/opt/gcc/bin, a wrapper of g++ 13.3) linked
# parts of libstdc++ into the extension (36 copies of ostream::_M_insert in _C.so), and the first
# error message a kernel formatted then crashed in that copy's un-initialised locale.
# LAVISE_CXX=... overrides the choice.
if [ -n "${LAVISE_CXX:-}" ]; then
  export CXX=$LAVISE_CXX CC=${LAVISE_CC:-$LAVISE_CXX}
elif [ -x /usr/bin/g++ ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi

echo "== machine (steps: $STEPS; device: $DEVICE)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.csv"
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
echo "compilers: CC=${CC:-default} CXX=${CXX:-default} ($(${CXX:-c++} --version | head -1))"

if want build; then
  echo "== build (FORCE_CUDA=1, arch $TORCH_CUDA_ARCH_LIST)"
  start=$(date +%s)
  if ! $PY setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  echo "built $(elapsed "$start")"
fi

if want tests; then
  echo "== tests (cpu and cuda cases)"
  start=$(date +%s)
  $PY -m pytest tests -q -p no:cacheprovider --maxfail=20 >"$OUT/tests.log" 2>&1 || status=1
  tail -4 "$OUT/tests.log"
  grep -E "FAILED|Error" "$OUT/tests.log" | head -20
  echo "tests $(elapsed "$start")"
fi

if want bench; then
  echo "== benchmarks still run (check mode)"
  start=$(date +%s)
  $PY -m pytest bench -q -p no:cacheprovider --benchmark-disable >"$OUT/bench_check.log" 2>&1 || status=1
  tail -2 "$OUT/bench_check.log"
  echo "benchmark check $(elapsed "$start")"
fi

if want ops; then
  echo "== op report ($DEVICE)"
  start=$(date +%s)
  $PY bench/report_ops.py --device "$DEVICE" 2>&1 | tee "$OUT/report_$DEVICE.md" || status=1
  echo "op report $(elapsed "$start")"
fi

if want sweep; then
  echo "== end-to-end sweep ($DEVICE): $SWEEP_MODEL layer4, $SWEEP_IMAGES images at $SWEEP_IMAGE_SIZE px," \
    "batch $SWEEP_BATCH, official inference on $SWEEP_BASELINE_FILTERS filter(s), at most $SWEEP_TIMEOUT s"
  start=$(date +%s)
  timeout -k 10 "$SWEEP_TIMEOUT" $PY bench/sweep.py --device "$DEVICE" --model "$SWEEP_MODEL" \
    --images "$SWEEP_IMAGES" --image-size "$SWEEP_IMAGE_SIZE" --batch-size "$SWEEP_BATCH" \
    --baseline-filters "$SWEEP_BASELINE_FILTERS" --repeats "$SWEEP_REPEATS" --no-memory 2>&1 \
    | tee "$OUT/sweep_$DEVICE.md" || { status=1; echo "SWEEP FAILED or cut off at $SWEEP_TIMEOUT s"; }
  echo "sweep $(elapsed "$start")"
fi

if want vit; then
  echo "== transformer sweep ($DEVICE): ViT-B/16 encoder_layer_11, $VIT_IMAGES images, at most $EXTRA_TIMEOUT s"
  start=$(date +%s)
  timeout -k 10 "$EXTRA_TIMEOUT" $PY bench/sweep.py --device "$DEVICE" --model vit_b_16 \
    --layer encoder.layers.encoder_layer_11 --images "$VIT_IMAGES" --image-size 224 --batch-size "$SWEEP_BATCH" \
    --baseline-filters 0 --repeats "$SWEEP_REPEATS" --no-memory 2>&1 | tee "$OUT/vit_$DEVICE.md" \
    || { status=1; echo "VIT SWEEP FAILED or cut off at $EXTRA_TIMEOUT s"; }
  echo "transformer sweep $(elapsed "$start")"
fi

if want layers; then
  echo "== five ResNet-50 layers in one pass ($DEVICE): $LAYERS_IMAGES images, at most $EXTRA_TIMEOUT s"
  start=$(date +%s)
  timeout -k 10 "$EXTRA_TIMEOUT" $PY bench/layers.py --device "$DEVICE" --images "$LAYERS_IMAGES" \
    --batch-size "$SWEEP_BATCH" --repeats "$SWEEP_REPEATS" 2>&1 | tee "$OUT/layers_$DEVICE.md" \
    || { status=1; echo "LAYERS SWEEP FAILED or cut off at $EXTRA_TIMEOUT s"; }
  echo "five layers $(elapsed "$start")"
fi

if want onnx; then
  echo "== ONNX head (onnxruntime vs the PyTorch head on $DEVICE): $ONNX_VECTORS vectors x $ONNX_CHANNELS channels"
  start=$(date +%s)
  timeout -k 10 "$ONNX_TIMEOUT" $PY bench/onnx_head.py --device "$DEVICE" --vectors "$ONNX_VECTORS" \
    --channels "$ONNX_CHANNELS" 2>&1 | tee "$OUT/onnx_head_$DEVICE.md" \
    || { status=1; echo "ONNX HEAD FAILED or cut off at $ONNX_TIMEOUT s"; }
  echo "ONNX head $(elapsed "$start")"
fi
echo "== done in $(( $(date +%s) - t0 )) s, status $status"
exit $status
