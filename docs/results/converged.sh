#!/usr/bin/env bash
# The converged NeFT-vs-LoRA comparison on Multi30k en->fr (docs/results/PLAN.md, issue "One converged answer").
# Resumable: rerun the same phase after an interruption; finished trainings are never redone, an unfinished one
# continues from its last checkpoint (kept in $CKPT, outside git). Usage: docs/results/converged.sh search|seeds
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
CKPT=${CKPT:-$HOME/.cache/peft-neft-grid}
PEFT_NEFT=${PEFT_NEFT:-.venv/bin/peft-neft}
common=(compare --task translation --source-lang en --target-lang fr
  --train "$DATA/multi30k/train.en.gz" "$DATA/multi30k/train.fr.gz" --limit-train 3000
  --validation "$DATA/multi30k/val.en.gz" "$DATA/multi30k/val.fr.gz" --limit-validation 200
  --eval "$DATA/multi30k/test_2016_flickr.en.gz" "$DATA/multi30k/test_2016_flickr.fr.gz" --limit-eval 1000
  --batch-size 8 --epochs 4 --steps 1500 --eval-every 94 --patience 3 --calibration-steps 94
  --max-new-tokens 40 --eval-batch-size 32 --workers 2 --save-adapters none --no-progress)
case "${1:-search}" in
  # Seed 0: three rates 3x apart around 1.5e-3 per method, chosen on validation loss.
  search) "$PEFT_NEFT" "${common[@]}" --methods base,lora:8,neft:match-lora:8 --seeds 0 \
            --lr lora=1.5e-3 --lr neft=1.5e-3 --lr-grid 1,0.333333,3 \
            --checkpoint-dir "$CKPT/search" --out docs/results/converged-multi30k-en-fr-search ;;
  *) echo "usage: $0 search" >&2; exit 2 ;;
esac
