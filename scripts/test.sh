#!/usr/bin/env bash
# Runs every test: the GoogleTest suite of the C++ core (also under ASan/UBSan)
# and the pytest suite. Creates the environment first (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

TORCH_DIR=$(.venv/bin/python -c "import os, torch; print(os.path.dirname(torch.__file__))")
for variant in release sanitize; do
  flags=(-DCMAKE_BUILD_TYPE=Release)
  [ "$variant" = sanitize ] && flags=(-DCMAKE_BUILD_TYPE=Debug -DQUANTEXT_SANITIZE=ON)
  echo "[test] GoogleTest ($variant)"
  # The build folders persist: a second run rebuilds only what changed.
  .venv/bin/cmake -S . -B "build/cmake-$variant" -DQUANTEXT_TORCH_DIR="$TORCH_DIR" "${flags[@]}" >/dev/null
  .venv/bin/cmake --build "build/cmake-$variant" -j "$(nproc)" >/dev/null
  .venv/bin/ctest --test-dir "build/cmake-$variant" --output-on-failure
done

echo "[test] pytest"
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider "$@"
