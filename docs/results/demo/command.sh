# Run from the repository root on the project's 2-core CPU (AMD EPYC, AVX2 only, no GPU; torch 2.13.0+cpu,
# transformers 5.23.0, peft 0.21.2), 2026-11-25, on the otherwise idle machine: 9 min 02 s wall, set-up and the
# model's one-time GGUF conversion excluded. `--dtype auto` resolved to float32 (no native bf16 on this CPU).
# The demo's defaults: base, lora:8 and neft:match-lora:8; 80 steps of 8 (about 1.3 epochs), validation every
# 10 steps, patience 3, both methods at 3e-3, 8 calibration steps, torch's thread count (2 here).
peft-neft demo --out docs/results/demo
