# Amendment 2 (docs/results/PLAN.md): the 4-epoch chosen rates at most 8 epochs. Run from the repository root
# with DATA=../shared/data, 2026-12-03, float32, 2-core Intel Xeon (AVX512-BF16, AMX). Stopped at the
# session's end with NeFT seeds 1 and 2 unfinished; the rates failed at this length (LoRA's validation loss rose
# during the 300-step warm-up and patience 3 stopped it at step 470).
docs/results/converged.sh long 0.0045 0.0135
# amendment 3, 2026-12-03, same machine and dtype: the 8-epoch rate search of seed 0 (1/3 and 1/9 of the rates above)
docs/results/converged.sh long-search
# amendment 3, 2026-12-03 (second session), same machine and dtype: LoRA seeds 1 and 2 at 1/3 of the rate above
docs/results/converged.sh long-seeds lora:8 0.333333
# amendment 3, 2026-12-03 (second session), same machine and dtype: NeFT seeds 1 and 2 at 1/3 of the rate above
docs/results/converged.sh long-seeds neft:match-lora:8 0.333333
