# Seeds 1 and 2 of LoRA r=8 at the rate seed 0's search chose (converged-multi30k-en-fr-search), run from the
# repository root with DATA=../shared/data, 2026-12-02, float32, on the project's machine type with a 2-core
# Intel Xeon (AVX512-BF16, AMX); seed 2 resumed from its committed checkpoint at step 1,316 in a later session.
# The full `peft-neft compare` command is in converged.sh.
docs/results/converged.sh seeds lora:8 0.0045
