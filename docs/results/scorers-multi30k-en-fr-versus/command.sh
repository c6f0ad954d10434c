# The scorer screen (scorers-multi30k-en-fr) merged with the converged Multi30k references (converged-multi30k-en-fr:
# LoRA r=8 and the paper's selection, seeds 0-2; random and reversed rows, seed 0), for the paired tests of each
# screen variant against LoRA, the paper's selection and random rows of the same seed (PLAN-scorers.md, verdict
# rules). Run from the repository root after each screen variant lands; the two folders are only read.
docs/results/scorers.sh versus
