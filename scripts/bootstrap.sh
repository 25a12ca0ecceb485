#!/usr/bin/env bash
# Sets up everything quantext needs on a fresh machine: a virtual environment
# with the pinned requirements (.venv), GoogleTest from Debian, and the
# extension built in place (with CUDA kernels when nvcc is present).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/.requirements; then
  echo "[bootstrap] creating .venv with the pinned requirements"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/.requirements
fi

if [ ! -f /usr/include/gtest/gtest.h ]; then
  echo "[bootstrap] installing GoogleTest (libgtest-dev)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq </dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libgtest-dev </dev/null >/dev/null
fi

# CUDA kernels are compiled whenever nvcc and a CUDA build of torch are both
# present (setup.py decides); the architectures cover Ampere and Hopper.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  for home in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; do
    if [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
  done
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "[bootstrap] building quantext (CUDA_HOME=${CUDA_HOME:-none})"
.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . >.venv/build.log 2>&1 || {
  tail -n 60 .venv/build.log
  exit 1
}
.venv/bin/python -c "import quantext, quantext._C as c; print('[bootstrap] quantext', quantext.__version__, 'cuda kernels:', c.with_cuda)"
