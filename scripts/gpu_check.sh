#!/usr/bin/env bash
# The GPU check: best_gpu on the catalogue in 16-mixed and bf16-mixed; training-loop and inference
# images/s against the bare model, peak GPU memory, and one real epoch; writes docs/gpu.md (about
# 5 minutes on one H100/H200). Extra arguments go to scripts/gpu_check.py (Hydra overrides, --output).
#   scripts/gpu_check.sh                                        # the whole catalogue in ../shared
#   DATA_ROOT=/data/fashion-product-images-small scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
args=()
if [ -n "${DATA_ROOT:-}" ]; then args+=("data.root=$DATA_ROOT"); fi
exec "$PY" scripts/gpu_check.py "${args[@]}" "$@"
