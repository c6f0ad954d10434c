# NeFT's ablations at the rate NeFT's seed-0 search chose: random and reversed rows at LoRA r=8's count, seed 0.
# Run from the repository root with DATA=../shared/data, 2026-12-02, float32, on the project's machine type with
# a 2-core Intel Xeon (AVX512-BF16, AMX). The full `peft-neft compare` command is in converged.sh.
docs/results/converged.sh ablations 0.0135
