# Seeds 1 and 2 of NeFT at LoRA r=8's parameter count, at the rate seed 0's search chose
# (converged-multi30k-en-fr-search), run from the repository root with DATA=../shared/data, 2026-12-02, float32,
# on the project's machine type with a 2-core Intel Xeon (AVX512-BF16, AMX). Seed 1's calibration ran in one
# session, seed 2's and both trainings in the next. The full `peft-neft compare` command is in converged.sh.
docs/results/converged.sh seeds neft:match-lora:8 0.0135
