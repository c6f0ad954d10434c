#!/usr/bin/env bash
# The converged NeFT-vs-LoRA comparison on DialogSumX en->fr (protocol: docs/results/PLAN-dialogsumx.md). Resumable:
# rerun a phase after an interruption; finished trainings are never redone, an unfinished one continues from its
# last checkpoint in $CKPT. Commit the folder as trainings land; before a session ends, stop the phase and copy the
# state into the repository with `keep`, and commit it.
#   docs/results/dialogsumx.sh search                  # seed 0: base, and three rates each for LoRA and NeFT
#   docs/results/dialogsumx.sh widen METHOD FACTORS    # one method's seed-0 grid widened: every factor, old and new
#   docs/results/dialogsumx.sh seeds METHOD FACTOR     # seeds 1 and 2 at the factor seed 0 chose
#   docs/results/dialogsumx.sh random FACTOR           # random rows at NeFT's chosen factor, seed 0
#   docs/results/dialogsumx.sh trans FACTOR            # the paper's Trans: rows chosen on Multi30k en->fr, seed 0
#   docs/results/dialogsumx.sh keep DEST               # $CKPT's resumable state, copied to DEST (DEST is replaced)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
CKPT=${CKPT:-docs/results/dialogsumx-state}
PEFT_NEFT=${PEFT_NEFT:-.venv/bin/peft-neft}
OUT=docs/results/converged-dialogsumx-en-fr
D=$DATA/dialogsumx
# The identity holds the centre rates; a phase names its rates as factors of them.
common=(compare --task summarization --source-lang en --target-lang fr --source-field en_dialogue --target-field fr_summary
  --train "$D/dialogsumx.train.jsonl.gz" --validation "$D/dialogsumx.dev.jsonl.gz" --eval "$D/dialogsumx.test.jsonl.gz"
  --max-source-tokens 512 --max-target-tokens 128 --max-new-tokens 128
  --batch-size 8 --eval-every 12 --patience 3 --epochs 8 --steps 400 --calibration-steps 12
  --eval-batch-size 8 --workers "${WORKERS:-1}" ${THREADS:+--threads "$THREADS"} --save-adapters none --no-progress --device cpu --dtype float32
  --lr lora=1.5e-3 --lr neft=4.5e-3 --checkpoint-dir "$CKPT" --out "$OUT")
case "${1:-search}" in
  search) "$PEFT_NEFT" "${common[@]}" --methods base,lora:8,neft:match-lora:8 --seeds 0 --lr-grid 1,0.333333,3 ;;
  widen) "$PEFT_NEFT" "${common[@]}" --methods "${2:?give the method, e.g. neft:match-lora:8}" --seeds 0 \
           --lr-grid "${3:?give every factor: the search ones and the new ones}" ;;
  seeds) "$PEFT_NEFT" "${common[@]}" --methods "${2:?give lora:8 or neft:match-lora:8}" --seeds 1,2 \
           --lr-grid "${3:?give the factor seed 0 chose, e.g. 1}" ;;
  random) "$PEFT_NEFT" "${common[@]}" --methods neft-random:match-lora:8 --seeds 0 \
            --lr-grid "${2:?give the factor seed 0 of NeFT chose, e.g. 1}" ;;
  trans) "$PEFT_NEFT" "${common[@]}" --methods "neft[calibration=multi30k-en-fr]:match-lora:8" --seeds 0 \
           --stored-calibration multi30k-en-fr=docs/results/converged-state/calibration@seed0.safetensors \
           --lr-grid "${2:?give the factor seed 0 of NeFT chose, e.g. 1}" ;;
  keep) docs/results/keep.sh "$CKPT" "${2:?give DEST, e.g. /path/to/checkout/docs/results/dialogsumx-state}" ;;  # stop the phase first
  *) echo "usage: $0 search|widen METHOD FACTORS|seeds METHOD FACTOR|random FACTOR|trans FACTOR|keep DEST" >&2; exit 2 ;;
esac
