# Run from the repository root on the project's 2-core CPU (no GPU), 2026-11-23, while one other compare job
# (one torch thread) shared the machine: 6 min 55 s wall. The demo's defaults: lora:8 and neft:match-lora:8,
# each trained at 1e-3 and 4.5e-3 and kept at the rate with the lower validation loss.
peft-neft demo --out docs/results/demo
