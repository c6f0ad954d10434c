# Run from the repository root on the project's machine type with a 2-core Intel Xeon (AVX512-BF16 and AMX;
# torch 2.13.0+cpu, transformers 5.23.0, peft 0.21.2), 2026-12-02, the converged grid paused (idle machine):
# 654 s wall for the three seeds, set-up excluded. The demo's defaults otherwise: base, lora:8 and
# neft:match-lora:8, 80 steps of 8, validation every 10 steps, patience 3, both methods at 3e-3, 8 calibration
# steps (float32), torch's thread count (2 here). The trained adapters (adapters/, 20 MB) are not committed.
peft-neft demo --seeds 0,1,2 --dtype float32 --out docs/results/demo-float32 --no-progress
