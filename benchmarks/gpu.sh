#!/usr/bin/env bash
# Everything that needs the GPU, on a CUDA machine (torch, nvcc, pytest and
# hypothesis already installed there). Stages, in the order given (default:
# all of them):
#   build     the extension, in place (python/quantext), with ptxas reports
#   tests     every kernel test, fuzz and LSQ-vs-ATen case, host-sync count and
#             prepare_qat placement on CUDA
#   sanitize  compute-sanitizer memcheck over the CUDA kernel tests
#   bench     kernel / histogram bandwidth, PoT/APoT vs uniform, ResNet-18 QAT step
# Logs go to ${OUT:-out/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
CUDA_TESTS="tests/python/test_uniform.py tests/python/test_histogram.py tests/python/test_pot_apot.py
  tests/python/test_codes.py tests/python/test_lsq.py tests/python/test_bad_input.py
  tests/python/test_fuzz_uniform.py tests/python/test_fuzz_levels.py tests/python/test_compile_amp.py
  tests/python/test_host_sync.py tests/python/test_prepare.py"

stage_build() {
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  # The system compiler (c++), not an image's CXX: one such wrapper linked libstdc++ statically into
  # the extension, whose number formatting then crashed every error message that printed an integer.
  env -u CXX -u CC QUANTEXT_CUDA=1 QUANTEXT_PTXAS_V=1 $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1 || {
    tail -n 40 "$OUT/build.log"; return 1; }
  grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn | head -40 >"$OUT/ptxas.txt"
}
# These tests run every case on CPU and CUDA (the `device` fixture); -k cuda keeps the CUDA half.
# With pytest-xdist a crashing test fails alone instead of ending the run.
stage_tests() {
  local workers; workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
  $PY -m pytest -q -p no:cacheprovider $workers -k cuda $CUDA_TESTS 2>&1 | tee "$OUT/tests.log" | tail -n 15
}
stage_sanitize() {
  compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest -q -x -p no:cacheprovider -k cuda \
    tests/python/test_uniform.py tests/python/test_histogram.py tests/python/test_pot_apot.py \
    tests/python/test_codes.py >"$OUT/memcheck.log" 2>&1
  echo "compute-sanitizer memcheck exit code: $?" | tee -a "$OUT/memcheck.log"
}
stage_bench() {
  $PY benchmarks/schemes.py --full --device cuda | tee "$OUT/schemes.md"
  $PY benchmarks/gpu.py | tee "$OUT/kernels.md"
  $PY -c "import sys; sys.path.insert(0, 'benchmarks'); import qat_step; print(qat_step.run(False, 'cuda', batch=256, size=224))" \
    | tee "$OUT/qat_step.md"
}

for stage in ${@:-build tests sanitize bench}; do
  "stage_$stage" || exit 1
done
