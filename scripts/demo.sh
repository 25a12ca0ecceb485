#!/usr/bin/env bash
# The main job: the end-to-end QAT demo (creates the environment first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python examples/qat_digits.py "$@"
