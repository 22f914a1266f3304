#!/usr/bin/env bash
# The GPU check: a smoke case (versions, one tiny step), then gpu-125m and gpu-1b, bf16, eager
# and compiled, FSDP2 on one GPU; about 8 minutes on one H100 or H200. Works on the tree as a lent
# GPU machine receives it: no .venv (plain python3, src/ put on PYTHONPATH), whatever
# torch/transformers its image has (reported against the pins), results to $OUT.
#
#   bash benchmarks/gpu_check.sh [--out-dir DIR]   # on a GPU machine; DIR defaults to $OUT
#   bash benchmarks/gpu_check.sh --dry-run         # anywhere: shapes, FLOPs, memory estimate
#
# DIR receives gpu.json, smoke.json's record inside it, logs/<case>.log and gpu.md. Back in the
# repository: cp DIR/gpu.json benchmarks/results/gpu.json and
#   python3 benchmarks/gpu_check.py --render benchmarks/results/gpu.json
# Extra arguments go to benchmarks/gpu_check.py (e.g. --budget-s 300, --presets gpu-1b).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for candidate in .venv/bin/python python3 python; do
    if [[ -x "$candidate" ]] || command -v "$candidate" >/dev/null 2>&1; then
      PY=$candidate
      break
    fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "gpu_check.sh: no Python found (.venv/bin/python, python3, python); set PYTHON" >&2
  exit 2
fi
# The tree's own lmforge first, installed or not.
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
PRESETS=${PRESETS:-gpu-125m,gpu-1b}

if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  exec "$PY" benchmarks/gpu_check.py --dry-run --presets "$PRESETS" --gpus 1,8 "$@"
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check.sh: nvidia-smi not found, so no NVIDIA GPU here; on CPU run:" \
    "bash benchmarks/gpu_check.sh --dry-run" >&2
  exit 2
fi

OUT_DIR=${OUT:-/tmp/gpu_check.$$}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ "${args[i]}" == "--out-dir" ]]; then OUT_DIR=${args[i + 1]}; fi
done
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
  tee "$OUT_DIR/nvidia-smi.txt"

# 60 s of smoke, 400 s of cases (each with its own timeout) and start-up: under 8 minutes.
status=0
timeout 500 "$PY" benchmarks/gpu_check.py --presets "$PRESETS" --budget-s 400 \
  --out-dir "$OUT_DIR" "$@" || status=$?
if [[ -f "$OUT_DIR/gpu.json" ]]; then
  "$PY" benchmarks/gpu_check.py --render "$OUT_DIR/gpu.json" --doc "$OUT_DIR/gpu.md"
fi
echo "gpu_check.sh: results in $OUT_DIR (exit $status)"
exit "$status"
