#!/usr/bin/env bash
# The converged NeFT-vs-LoRA comparison on Multi30k en->fr (protocol: docs/results/PLAN.md). Resumable: rerun a
# phase after an interruption; finished trainings are never redone, an unfinished one continues from its last
# checkpoint (in $CKPT, outside git; a new machine starts that training again). Commit each folder as runs land.
# float32 on every machine: the grid spans sessions on CPUs with and without native bf16, and a folder keeps one dtype.
#   docs/results/converged.sh search                          # seed 0: three rates per method
#   LORA_LR=... NEFT_LR=... docs/results/converged.sh seeds     # seeds 1 and 2 at the rates seed 0 chose
#   NEFT_LR=... docs/results/converged.sh ablations             # random and reversed rows at NeFT's rate, seed 0
#   docs/results/converged.sh report                          # the three folders as one table
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
CKPT=${CKPT:-$HOME/.cache/peft-neft-grid}
PEFT_NEFT=${PEFT_NEFT:-.venv/bin/peft-neft}
OUT=docs/results/converged-multi30k-en-fr
common=(compare --task translation --source-lang en --target-lang fr
  --train "$DATA/multi30k/train.en.gz" "$DATA/multi30k/train.fr.gz" --limit-train 3000
  --validation "$DATA/multi30k/val.en.gz" "$DATA/multi30k/val.fr.gz" --limit-validation 200
  --eval "$DATA/multi30k/test_2016_flickr.en.gz" "$DATA/multi30k/test_2016_flickr.fr.gz" --limit-eval 1000
  --batch-size 8 --epochs 4 --steps 1500 --eval-every 94 --patience 3 --calibration-steps 94
  --max-new-tokens 40 --eval-batch-size 32 --workers 2 --save-adapters none --no-progress
  --device cpu --dtype float32)
case "${1:-search}" in
  search) "$PEFT_NEFT" "${common[@]}" --methods base,lora:8,neft:match-lora:8 --seeds 0 \
            --lr lora=1.5e-3 --lr neft=1.5e-3 --lr-grid 1,0.333333,3 \
            --checkpoint-dir "$CKPT/search" --out "$OUT-search" ;;
  seeds) "$PEFT_NEFT" "${common[@]}" --methods lora:8,neft:match-lora:8 --seeds 1,2 \
           --lr lora="${LORA_LR:?give the rate seed 0 chose}" --lr neft="${NEFT_LR:?give the rate seed 0 chose}" \
           --checkpoint-dir "$CKPT/seeds" --out "$OUT-seeds" ;;
  ablations) "$PEFT_NEFT" "${common[@]}" --methods neft-random:match-lora:8,neft-reversed:match-lora:8 --seeds 0 \
               --lr neft="${NEFT_LR:?give the rate seed 0 chose}" \
               --checkpoint-dir "$CKPT/ablations" --out "$OUT-ablations" ;;
  report) "$PEFT_NEFT" report "$OUT-search" "$OUT-seeds" "$OUT-ablations" --out "$OUT" ;;
  *) echo "usage: $0 search|seeds|ablations|report" >&2; exit 2 ;;
esac
