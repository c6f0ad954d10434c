# Seed 0's learning-rate search of the converged comparison (protocol: docs/results/PLAN.md), run from the
# repository root with DATA=../shared/data, 2026-12-02, float32 (pinned by converged.sh). It ran across
# sessions on the project's machine type, first with a 2-core AMD EPYC (AVX2 only: seed 0's calibration, base,
# the first steps at 5e-4), then with a 2-core Intel Xeon (AVX512-BF16, AMX: the rest); interrupted trainings resumed from their committed
# checkpoints (docs/results/converged-state). Each line's full `peft-neft compare` command is in converged.sh.
docs/results/converged.sh search                                           # three rates per method: 5e-4, 1.5e-3, 4.5e-3
docs/results/converged.sh widen lora:8,neft:match-lora:8 1,0.333333,3,9    # both chose their highest rate: adds 1.35e-2
docs/results/converged.sh widen neft:match-lora:8 1,0.333333,3,9,27        # NeFT chose 1.35e-2, its highest: adds 4.05e-2
