# Run from the repository root on the project's machine type with a 2-core Intel Xeon (AVX512-BF16 and AMX;
# torch 2.13.0+cpu, transformers 5.23.0, peft 0.21.2), 2026-12-02, the converged grid paused (idle machine):
# 606 s wall for the three seeds, set-up excluded (docs/results/demo-float32: 654 s). bf16 is native here, so
# --dtype auto would pick it too. Code of that afternoon: calibration in float32, bf16 batches padded to a
# multiple of 16, the LM head's input made contiguous while decoding. The trained adapters are not committed.
peft-neft demo --seeds 0,1,2 --dtype bfloat16 --out docs/results/demo-bfloat16 --no-progress
