#!/usr/bin/env bash
# One check for a GPU machine (the lent H100/H200 has python3 with a CUDA torch and nvcc):
# builds lavise_fast from source against the machine's own torch, runs the test suite
# (the `cuda` cases included), then the op report (fused vs reference, GB/s against a
# measured copy bandwidth) and prints one short table. Meant to finish in under 8 minutes.
#   bash bench/device_check.sh            # logs go to $OUT (or /tmp/lavise_device) too
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lavise_device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PYTHON:-python3}
status=0
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

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.csv"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
echo "compilers: CC=${CC:-default} CXX=${CXX:-default} ($(${CXX:-c++} --version | head -1))"

echo "== build (FORCE_CUDA=1, arch $TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
if ! $PY setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"

echo "== tests (cpu and cuda cases)"
$PY -m pytest tests -q -p no:cacheprovider --maxfail=20 >"$OUT/tests.log" 2>&1 || status=1
tail -4 "$OUT/tests.log"
grep -E "FAILED|Error" "$OUT/tests.log" | head -20

echo "== benchmarks still run (check mode)"
$PY -m pytest bench -q -p no:cacheprovider --benchmark-disable >"$OUT/bench_check.log" 2>&1 || status=1
tail -2 "$OUT/bench_check.log"

echo "== op report (cuda)"
$PY bench/report_ops.py --device cuda 2>&1 | tee "$OUT/report_cuda.md" || status=1
exit $status
