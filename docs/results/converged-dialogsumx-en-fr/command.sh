# The converged comparison on DialogSumX en->fr (protocol: docs/results/PLAN-dialogsumx.md), run from the
# repository root with DATA=../shared/data, float32 (pinned by dialogsumx.sh), on the project's machine type:
# 2026-12-06, a 2-core Intel Xeon with avx512_bf16 (no AMX). The state lived in CKPT=/work/dsx-ckpt while it ran
# and was kept in docs/results/dialogsumx-state (dialogsumx.sh keep) for the next session. Each line's full
# `peft-neft compare` command is in dialogsumx.sh.
docs/results/dialogsumx.sh search    # seed 0: base (done 2026-12-06), then LoRA and NeFT at three rates each
