#!/usr/bin/env bash
# GPU checks for the deploy stage, in one go, on a machine with an NVIDIA GPU (H100/H200):
# builds fp32 and fp16 TensorRT engines for the default model, checks their parity, runs the export
# tests (the TensorRT ones only run where a GPU is), and times every backend at batch 1.
# Usage: bench/gpu_checks.sh [OUT_DIR]   (needs `make setup` first; it adds the `gpu` extra when nvidia-smi exists)
set -euo pipefail
out=${1:-bench/results/gpu}
py=.venv/bin/python
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py - "$out" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from runtime import default_policy
from mt_policy.checkpoint import save_checkpoint
save_checkpoint(default_policy(10), Path(sys.argv[1]) / "ckpt")
PY
.venv/bin/mt-policy export --checkpoint "$out/ckpt" --out "$out/fp32" --tensorrt
.venv/bin/mt-policy export --checkpoint "$out/ckpt" --out "$out/fp16" --tensorrt --fp16
$py -m pytest -q tests/test_export.py
for precision in fp32 fp16; do
  .venv/bin/mt-policy bench-runtime --checkpoint "$out/ckpt" --onnx "$out/$precision" --calls 2000 \
    --json "$out/bench_$precision.json"
done
