#!/usr/bin/env bash
# The GPU check: gpu-125m and gpu-1b, bf16, eager and compiled, FSDP2 on one GPU; at most
# 8 minutes on one H200. Writes benchmarks/results/gpu.json and regenerates
# docs/benchmarks/gpu.md from it.
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: shapes, FLOPs, memory estimate (to /tmp)
#
# Extra arguments go to benchmarks/gpu_check.py (e.g. --budget-s 300, --out PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

OUT=benchmarks/results/gpu.json
# 450 s of cases (gpu_check.py's budget, each case its own timeout) plus start-up: under 8 min.
timeout 470 "$PY" benchmarks/gpu_check.py --presets "$PRESETS" --budget-s 450 --out "$OUT" "$@"
"$PY" benchmarks/gpu_check.py --render "$OUT" --doc docs/benchmarks/gpu.md
