#!/usr/bin/env bash
# The converged NeFT-vs-LoRA comparison on Multi30k en->fr (protocol: docs/results/PLAN.md). Resumable: rerun a
# phase after an interruption; finished trainings are never redone, an unfinished one continues from its last
# checkpoint in $CKPT. Commit each results folder as trainings land, and before a session ends copy the state
# into the repository with `keep` and commit it, so the next session (a new machine) continues from there.
# float32 on every machine: the grid spans sessions on CPUs with and without native bf16, and a folder keeps one dtype.
#   docs/results/converged.sh search                          # seed 0: three rates per method
#   docs/results/converged.sh widen neft:match-lora:8 1,0.333333,3,9   # one method's seed-0 grid, widened alone
#   docs/results/converged.sh seeds METHOD RATE                # seeds 1 and 2 of one method, at the rate seed 0 chose
#   docs/results/converged.sh ablations RATE                   # random and reversed rows at NeFT's rate, seed 0
#   docs/results/converged.sh report                          # the folders as one table
#   docs/results/converged.sh long LORA_RATE NEFT_RATE        # amendment 2: both chosen rates, seeds 0-2, at most
#                                                             # 8 epochs. Ran once and failed: the 4-epoch rates do not
#                                                             # carry over (LoRA stopped early); a longer schedule needs
#                                                             # its own rate search (PLAN.md)
#   docs/results/converged.sh long-search                     # amendment 3: that rate search, seed 0, in the long
#                                                             # folder: factors 1, 1/3, 1/9 of amendment 2's rates
#   docs/results/converged.sh long-seeds METHOD FACTOR        # amendment 3: seeds 1 and 2 at the factor seed 0 chose
#   docs/results/converged.sh long-ablations FACTOR           # optional: random and reversed rows at NeFT's 8-epoch rate
# A method's seeds start as soon as its own search is bracketed; its folder is its own, so the phases that
# can run do (each with two workers: seeds 1 and 2 side by side).
#   docs/results/converged.sh keep DEST                       # $CKPT's resumable state, copied to DEST
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
CKPT=${CKPT:-docs/results/converged-state}
PEFT_NEFT=${PEFT_NEFT:-.venv/bin/peft-neft}
OUT=docs/results/converged-multi30k-en-fr
common=(compare --task translation --source-lang en --target-lang fr
  --train "$DATA/multi30k/train.en.gz" "$DATA/multi30k/train.fr.gz" --limit-train 3000
  --validation "$DATA/multi30k/val.en.gz" "$DATA/multi30k/val.fr.gz" --limit-validation 200
  --eval "$DATA/multi30k/test_2016_flickr.en.gz" "$DATA/multi30k/test_2016_flickr.fr.gz" --limit-eval 1000
  --batch-size 8 --eval-every 94 --patience 3 --calibration-steps 94
  --max-new-tokens 40 --eval-batch-size 32 --workers "${WORKERS:-2}" --save-adapters none --no-progress
  --device cpu --dtype float32)
length=(--epochs 4 --steps 1500)
# The long folder's 8-epoch schedule; its identity holds amendment 2's rates, so amendment 3 gives a rate as a factor of them.
long_length=(--epochs 8 --steps 3000)
long=("${long_length[@]}" --lr lora=0.0045 --lr neft=0.0135)
# compare deletes a folder's calibrations once its runs are done, but a widened search, the ablations and the long
# runs need them again: the pristine copies in $CKPT (committed) spare the recomputation (the same scores).
# calibration DIR SEED...: copies each seed's pristine calibration into $CKPT/DIR where it lacks one.
calibration() { local dir=$1 seed; shift
  for seed in "$@"; do local pristine="$CKPT/calibration@seed$seed.safetensors"
    if [ -e "$pristine" ] && [ ! -e "$CKPT/$dir/${pristine##*/}" ]; then
      mkdir -p "$CKPT/$dir" && cp "$pristine" "$CKPT/$dir/"; fi; done; }
case "${1:-search}" in
  search) calibration search 0; "$PEFT_NEFT" "${common[@]}" "${length[@]}" --methods base,lora:8,neft:match-lora:8 --seeds 0 \
            --lr lora=1.5e-3 --lr neft=1.5e-3 --lr-grid 1,0.333333,3 \
            --checkpoint-dir "$CKPT/search" --out "$OUT-search" ;;
  widen) calibration search 0; "$PEFT_NEFT" "${common[@]}" "${length[@]}" --methods "${2:?give the method, e.g. neft:match-lora:8}" --seeds 0 \
           --lr lora=1.5e-3 --lr neft=1.5e-3 --lr-grid "${3:?give every factor: the search ones and the new ones}" \
           --checkpoint-dir "$CKPT/search" --out "$OUT-search" ;;
  seeds) method=${2:?give lora:8 or neft:match-lora:8}; kind=${method%%:*}
         if [ "$kind" = neft ]; then calibration seeds-neft 1 2; fi
         "$PEFT_NEFT" "${common[@]}" "${length[@]}" --methods "$method" --seeds 1,2 --lr "$kind=${3:?give the rate seed 0 chose}" \
           --checkpoint-dir "$CKPT/seeds-$kind" --out "$OUT-seeds-$kind" ;;
  ablations) calibration ablations 0; "$PEFT_NEFT" "${common[@]}" "${length[@]}" --methods neft-random:match-lora:8,neft-reversed:match-lora:8 --seeds 0 \
               --lr neft="${2:?give the rate seed 0 of NeFT chose}" \
               --checkpoint-dir "$CKPT/ablations" --out "$OUT-ablations" ;;
  long) calibration long 0 1 2
        "$PEFT_NEFT" "${common[@]}" "${long_length[@]}" --methods lora:8,neft:match-lora:8 --seeds 0,1,2 \
          --lr lora="${2:?give the rate LoRA chose}" --lr neft="${3:?give the rate NeFT chose}" \
          --checkpoint-dir "$CKPT/long" --out "$OUT-long" ;;
  long-search) calibration long 0
        "$PEFT_NEFT" "${common[@]}" "${long[@]}" --methods lora:8,neft:match-lora:8 --seeds 0 --lr-grid 1,0.333333,0.1111111 \
          --checkpoint-dir "$CKPT/long" --out "$OUT-long" ;;
  long-seeds) method=${2:?give lora:8 or neft:match-lora:8}
        if [ "${method%%:*}" = neft ]; then calibration long 1 2; fi
        "$PEFT_NEFT" "${common[@]}" "${long[@]}" --methods "$method" --seeds 1,2 \
          --lr-grid "${3:?give the factor seed 0 chose, e.g. 0.333333}" --checkpoint-dir "$CKPT/long" --out "$OUT-long" ;;
  long-ablations) calibration long 0
        "$PEFT_NEFT" "${common[@]}" "${long[@]}" --methods neft-random:match-lora:8,neft-reversed:match-lora:8 --seeds 0 \
          --lr-grid "${2:?give the factor seed 0 of NeFT chose, e.g. 0.333333}" --checkpoint-dir "$CKPT/long" --out "$OUT-long" ;;
  report) "$PEFT_NEFT" report "$OUT-search" "$OUT-seeds-lora" "$OUT-seeds-neft" "$OUT-ablations" --out "$OUT" ;;
  keep) docs/results/keep.sh "$CKPT" "${2:?give DEST, e.g. /path/to/checkout/docs/results/converged-state}" ;;  # stop the phase first
  *) echo "usage: $0 search|widen METHOD FACTORS|seeds METHOD RATE|ablations RATE|report|long LORA_RATE NEFT_RATE|long-search|long-seeds METHOD FACTOR|long-ablations FACTOR|keep DEST" >&2; exit 2 ;;
esac
