# Run from the repository root on the project's 2-core CPU (AMD EPYC, AVX2 only, no GPU; torch 2.13.0+cpu,
# transformers 5.24.0, peft 0.21.2), 2026-11-25, with other engineers' jobs sharing the 2 cores (load average
# 1 to 4 during the run): 12 min 11 s wall. `--dtype auto` resolved to float32 (no native bf16 on this CPU).
# The demo's defaults: base, lora:8 and neft:match-lora:8; 60 steps of 8 (about one epoch), validation every
# 10 steps, patience 3, both methods at 2e-3, 8 calibration steps, one torch thread.
peft-neft demo --out docs/results/demo
