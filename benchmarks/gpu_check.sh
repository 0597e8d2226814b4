#!/usr/bin/env bash
# GPU check: throughput, MFU, peak memory and teacher overhead of a ViT-B and a ~350M Llama
# chain stage, eager and compiled, on one NVIDIA GPU. Under 8 minutes on an H100.
# Run from anywhere; results: stdout and benchmarks/results/gpu_check.json.
#   bash benchmarks/gpu_check.sh                 # the full check
#   bash benchmarks/gpu_check.sh --steps 10      # extra flags go to gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [[ " $* " != *" --cpu-smoke "* ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 470 "$PYTHON" -m benchmarks.gpu_check "$@"
