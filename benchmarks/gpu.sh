#!/usr/bin/env bash
# Everything that needs the GPU, in one call on a CUDA machine (torch, nvcc,
# pytest already installed there): build, CUDA tests, compute-sanitizer,
# kernel / histogram benchmarks and the ResNet-18 QAT step at batch 256,
# 224x224. Logs go to ${OUT:-out/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

QUANTEXT_PTXAS_V=1 $PY -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || {
  tail -n 40 "$OUT/build.log"; exit 1; }
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn | head -40 >"$OUT/ptxas.txt"

# The kernel tests run every case on CPU and CUDA (the `device` fixture).
KERNEL_TESTS="tests/python/test_uniform.py tests/python/test_histogram.py tests/python/test_pot_apot.py tests/python/test_codes.py tests/python/test_lsq.py"
$PY -m pytest -q -p no:cacheprovider $KERNEL_TESTS tests/python/test_compile_amp.py 2>&1 | tee "$OUT/tests.log" | tail -n 5
compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest -q -x -p no:cacheprovider -k cuda \
  tests/python/test_uniform.py tests/python/test_histogram.py tests/python/test_pot_apot.py \
  >"$OUT/memcheck.log" 2>&1; echo "compute-sanitizer memcheck exit code: $?" | tee -a "$OUT/memcheck.log"

$PY benchmarks/gpu.py | tee "$OUT/kernels.md"
$PY -c "import sys; sys.path.insert(0, 'benchmarks'); import qat_step; print(qat_step.run(False, 'cuda', batch=256, size=224))" \
  | tee "$OUT/qat_step.md"
