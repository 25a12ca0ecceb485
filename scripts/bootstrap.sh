#!/usr/bin/env bash
# Sets up everything quantext needs on a fresh machine: a virtual environment
# with the pinned requirements (.venv), GoogleTest from Debian, and the
# extension built in place (with CUDA kernels when nvcc is present).
#
# Run again, it redoes only what changed: the environment when
# requirements.txt changes, the extension when an input of its build does
# (sources, headers, setup.py, torch, the compilers, the CUDA and CPU
# settings). The build directory (build/ext) persists, so ninja recompiles
# just the objects whose sources or headers changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/.requirements; then
  echo "[bootstrap] creating .venv with the pinned requirements"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/.requirements
fi
# The package is imported from the source tree (python/), the way an editable
# install does, without pip rebuilding the extension in a fresh temporary
# directory on every run.
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$PWD/python" >"$site/quantext-source.pth"

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

# Everything that goes into the build, hashed: when it is unchanged the
# extension in python/quantext is the one this exact input produced.
build_inputs() {
  find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 | sort -z |
    xargs -0 sha256sum
  sha256sum setup.py
  .venv/bin/python -c "import torch, sys; print(torch.__version__, torch.version.cuda, sys.version)"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  ${CXX:-c++} --version | head -n 1
  grep -m1 -o ' avx2 .* fma \| avx2 ' /proc/cpuinfo 2>/dev/null || true
  echo "CUDA_HOME=${CUDA_HOME:-} ARCH=$TORCH_CUDA_ARCH_LIST QUANTEXT_CUDA=${QUANTEXT_CUDA:-} CPU_ARCH=${QUANTEXT_CPU_ARCH:-}"
}
stamp=$(build_inputs | sha256sum | cut -d' ' -f1)
if ls python/quantext/_C*.so >/dev/null 2>&1 && [ "$(cat build/ext/.inputs 2>/dev/null)" = "$stamp" ]; then
  echo "[bootstrap] quantext extension up to date"
else
  echo "[bootstrap] building quantext (CUDA_HOME=${CUDA_HOME:-none}; log: build/ext/build.log)"
  mkdir -p build/ext
  rm -f build/ext/.inputs
  .venv/bin/python setup.py build_ext --build-temp build/ext/obj --build-lib build/ext/lib >build/ext/build.log 2>&1 || {
    tail -n 60 build/ext/build.log
    exit 1
  }
  # Renamed into place: a process still running the old library keeps its copy.
  for so in build/ext/lib/quantext/_C*.so; do
    cp "$so" "python/quantext/.$(basename "$so").new"
    mv -f "python/quantext/.$(basename "$so").new" "python/quantext/$(basename "$so")"
  done
  echo "$stamp" >build/ext/.inputs
fi
.venv/bin/python -c "import quantext, quantext._C as c; print('[bootstrap] quantext', quantext.__version__, 'cuda kernels:', c.with_cuda)"
