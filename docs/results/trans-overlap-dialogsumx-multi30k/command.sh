#!/usr/bin/env bash
# The overlap of the rows the paper's cosine score selects on Multi30k en->fr and on DialogSumX en->fr (seed 0, each
# task's committed calibration, at LoRA r=8's parameter count), for issue 38's Trans row. Run from the repository root.
set -euo pipefail
D=docs/results/trans-overlap-dialogsumx-multi30k
tmp=$(mktemp -d)
.venv/bin/peft-neft select --scores docs/results/converged-state/calibration@seed0.safetensors --lora-rank 8 \
  --out "$tmp/multi30k.safetensors" --no-progress
.venv/bin/peft-neft select --scores docs/results/dialogsumx-state/calibration@seed0.safetensors --lora-rank 8 \
  --out "$tmp/dialogsumx.safetensors" --no-progress
.venv/bin/peft-neft inspect "multi30k-en-fr=$tmp/multi30k.safetensors" "dialogsumx-en-fr=$tmp/dialogsumx.safetensors" \
  --model default --out "$D/report.md" --plot "$D/report.png" --no-progress
rm -rf "$tmp"
