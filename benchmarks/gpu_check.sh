#!/usr/bin/env bash
# One prepared GPU check for a machine with an NVIDIA GPU: finishes in <= 8 minutes, downloads nothing.
# Prints paper-MSDM training steps/s, generation images/s with peak memory and TFLOP/s against the card's
# bf16 peak, the same generation through `accelerate launch` on one GPU, and tiny LoRA steps on CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 python benchmarks/gpu_check.py --only train --only generate --only lora
timeout 150 accelerate launch --num_processes 1 --mixed_precision bf16 \
  benchmarks/gpu_check.py --only generate --label "accelerate"
