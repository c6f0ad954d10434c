#!/usr/bin/env bash
# keep.sh CKPT DEST: a comparison's resumable state, copied from CKPT to DEST (DEST is replaced as a whole), for
# the results scripts' `keep` phase. Stop the phase first. Keeps every calibration cache, the test-set batches a
# stopped decoding finished (decoded.jsonl), a running batch-scorer calibration's state (taylor, gradient, activation:
# <key>.partial/calibration-state.safetensors, per-row totals, small), and each unfinished training's newest complete
# checkpoint (one that holds keep_best.safetensors); a finished training is in the committed results.json already.
# A running cosine/movement calibration's Trainer checkpoints (<key>.partial/checkpoint-N: a full model plus Adam
# state, 1.6 GB for SmolLM2-135M) are NOT kept: such a calibration starts over.
set -euo pipefail
ckpt=${1:?give CKPT}; dest=${2:?give DEST}
rm -rf "$dest.partial" && mkdir -p "$dest.partial"
(cd "$ckpt" && find . -name 'calibration*@*.safetensors' -o -name decoded.jsonl \
  -o -path '*.partial/calibration-state.safetensors') | while read -r f; do
  mkdir -p "$dest.partial/$(dirname "$f")" && cp "$ckpt/$f" "$dest.partial/$f"; done
(cd "$ckpt" && find . -path '*/checkpoint-*/keep_best.safetensors' | sed 's|/keep_best.safetensors$||' | sort -V |
  awk '{training=$0; sub(/\/checkpoint-[0-9]+$/, "", training); newest[training]=$0} END {for (t in newest) print newest[t]}') |
  while read -r c; do mkdir -p "$dest.partial/$(dirname "$c")" && cp -r "$ckpt/$c" "$dest.partial/$c"
    rm -f "$dest.partial/$c"/tokenizer* "$dest.partial/$c"/chat_template.jinja; done  # the model's own, 3.5 MB
rm -rf "$dest" && mv "$dest.partial" "$dest" && du -sh "$dest"
