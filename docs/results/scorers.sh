#!/usr/bin/env bash
# The scorer study on Multi30k en->fr (protocol: docs/results/PLAN-scorers.md): the converged 4-epoch protocol of
# converged.sh, seed 0, every variant at NeFT's chosen 4-epoch rate 1.35e-2. Resumable as converged.sh: rerun a phase
# after an interruption; before a session ends stop it, copy the state into the repository with `keep`, commit.
#   docs/results/scorers.sh screen                  # the screen, seed 0, one folder
#   docs/results/scorers.sh all-linear VARIANT      # the screen's best variant (its bracket text) on all-linear targets
#   docs/results/scorers.sh bracket METHOD          # a method's rate, 3x each side (factors of 1.35e-2)
#   docs/results/scorers.sh seeds METHOD FACTOR     # seeds 1 and 2 at the factor its bracket chose
#   docs/results/scorers.sh placement               # where each screen selection sits (OUT/placement.md, .png)
#   docs/results/scorers.sh versus                  # the screen merged with the converged references: paired tests
#   docs/results/scorers.sh keep DEST               # $CKPT's resumable state, copied to DEST (DEST is replaced)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
CKPT=${CKPT:-docs/results/scorers-state}
PEFT_NEFT=${PEFT_NEFT:-.venv/bin/peft-neft}
OUT=docs/results/scorers-multi30k-en-fr
common=(compare --task translation --source-lang en --target-lang fr
  --train "$DATA/multi30k/train.en.gz" "$DATA/multi30k/train.fr.gz" --limit-train 3000
  --validation "$DATA/multi30k/val.en.gz" "$DATA/multi30k/val.fr.gz" --limit-validation 200
  --eval "$DATA/multi30k/test_2016_flickr.en.gz" "$DATA/multi30k/test_2016_flickr.fr.gz" --limit-eval 1000
  --batch-size 8 --eval-every 94 --patience 3 --calibration-steps 94 --epochs 4 --steps 1500
  --max-new-tokens 40 --eval-batch-size 32 --workers "${WORKERS:-1}" ${THREADS:+--threads "$THREADS"} --save-adapters none --no-progress
  --device cpu --dtype float32 --lr neft=1.35e-2 --checkpoint-dir "$CKPT" --out "$OUT")
screen=("neft[score=movement]:match-lora:8" "neft[score=taylor]:match-lora:8" "neft[score=taylor,spread=per-layer]:match-lora:8"
  "neft[score=gradient]:match-lora:8" "neft[score=activation]:match-lora:8"
  "neft[score=activation,spread=per-layer]:match-lora:8" "neft[spread=per-module]:match-lora:8"
  "neft-random[targets=all-linear]:match-lora:8")
join() { local IFS=,; echo "$*"; }
# The paper's seed-0 calibration on this protocol is committed (converged-state); per-module cosine reuses it.
if [ -e docs/results/converged-state/calibration@seed0.safetensors ] && [ ! -e "$CKPT/calibration@seed0.safetensors" ]; then
  mkdir -p "$CKPT" && cp docs/results/converged-state/calibration@seed0.safetensors "$CKPT/"; fi
case "${1:-screen}" in
  screen) "$PEFT_NEFT" "${common[@]}" --methods "$(join "${screen[@]}")" --seeds 0 ;;
  all-linear) variant=${2:?give the bracket text of the best variant, e.g. score=taylor,spread=per-layer}
              "$PEFT_NEFT" "${common[@]}" --methods "neft[$variant,targets=all-linear]:match-lora:8" --seeds 0 ;;
  bracket) "$PEFT_NEFT" "${common[@]}" --methods "${2:?give the method}" --seeds 0 --lr-grid 1,0.333333,3 ;;
  seeds) "$PEFT_NEFT" "${common[@]}" --methods "${2:?give the method}" --seeds 1,2 --lr-grid "${3:?give the factor}" ;;
  placement)  # each calibration's selection at LoRA r=8's count (OUT's, else CKPT's), as the screen trained it; missing ones named
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT; labelled=()
    for v in paper=global: movement=global:movement taylor=global:taylor taylor-per-layer=per-layer:taylor \
             gradient=global:gradient activation=global:activation activation-per-layer=per-layer:activation \
             cosine-per-module=per-module: activation-per-layer-all-linear=per-layer:activation,targets=all-linear; do
      label=${v%%=*}; spread=${v#*=}; spread=${spread%%:*}; score=${v##*:}
      file=$OUT/calibrations/calibration${score:+[score=$score]}@seed0.safetensors
      [ -e "$file" ] || file=$CKPT/${file##*/}  # the screen moves calibrations into OUT when its call ends
      [ -n "$score" ] || [ -e "$file" ] || file=docs/results/converged-state/calibration@seed0.safetensors
      if [ ! -e "$file" ]; then echo "placement: $label has no kept calibration yet ($file)" >&2; continue; fi
      "$PEFT_NEFT" select --scores "$file" --lora-rank 8 --spread "$spread" --out "$tmp/$label.safetensors" --no-progress
      labelled+=("$label=$tmp/$label.safetensors"); done
    "$PEFT_NEFT" inspect "${labelled[@]}" --model default --out "$OUT/placement.md" --plot "$OUT/placement.png" --no-progress ;;
  versus)  # each screen variant against LoRA, the paper's selection and random rows of the same seed (read only);
           # the converged folder comes first, so its seed-0 random rows (the plan's reference) win over the bracket's rerun
    "$PEFT_NEFT" report docs/results/converged-multi30k-en-fr "$OUT" --out "$OUT-versus" --overwrite ;;
  keep) docs/results/keep.sh "$CKPT" "${2:?give DEST, e.g. /path/to/checkout/docs/results/scorers-state}" ;;  # stop the phase first
  *) echo "usage: $0 screen|all-linear VARIANT|bracket METHOD|seeds METHOD FACTOR|placement|versus|keep DEST" >&2; exit 2 ;;
esac
