# The scorer study's screen on Multi30k en->fr (protocol: docs/results/PLAN-scorers.md), run from the repository
# root with DATA=../shared/data, float32 (pinned by scorers.sh), on the project's machine type: 2026-12-06, a 2-core
# Intel Xeon with avx512_bf16 (no AMX). The state lived in CKPT=/work/scorers-ckpt while it ran and is kept in
# docs/results/scorers-state (scorers.sh keep) for the next session. The full `peft-neft compare` command is in
# scorers.sh. Started with THREADS=1 beside the DialogSumX search (22:28 UTC); from step 282 (22:49) with THREADS=2
# and the DialogSumX search paused. Landed so far: random rows on all-linear (23:43), movement (00:28 UTC
# 2026-12-07); taylor's training stopped at step 752 (01:07), its calibration and checkpoint kept. Resumed 2026-12-07
# 01:29 UTC on a 2-core AMD EPYC (no avx512_bf16, no AMX), THREADS=2, alone on the machine: taylor landed (02:17), taylor per-layer
# (03:30); stopped 03:31 in the gradient calibration for the session's CI check, its partial state kept;
# resumed 03:53, gradient's training stopped at step 188 (04:05) and kept. Resumed 04:39 on a 2-core AMD EPYC (no
# avx512_bf16, no AMX; Zen 3, AVX2 only), THREADS=2, alone (about 3.2 s a step with validation on this machine): gradient landed (06:02);
# activation's training stopped at step 1034 (07:05) and kept. Resumed 12:50 UTC on a 2-core AMD EPYC (Zen 3, family 25
# model 1: AVX2 only, no AVX-512, no AMX), THREADS=2, alone (about 3.2 s a step): activation landed (13:19),
# activation per-layer (14:45); per-module cosine's training stopped at step 376 (15:08) and kept.
# 2026-12-07: resumed 16:08 UTC on a 2-core AMD EPYC (Zen 3, family 25 model 1), THREADS=2, alone (about 3.6 s a step):
# per-module cosine landed (17:20), completing the screen; then the screen's best on validation loss on all-linear targets:
docs/results/scorers.sh screen    # seed 0: the eight variants
docs/results/scorers.sh placement # where each selection sits (placement.md, placement.png)
docs/results/scorers.sh all-linear score=activation,spread=per-layer  # started 17:20, stopped at step 658 (18:02), resumed 18:31, stopped at step 940 (18:48), kept
# 2026-12-07: resumed 19:24 UTC on a 2-core AMD EPYC (Zen 4, family 25 model 17: AVX-512, avx512_bf16), THREADS=2, alone
# (about 2.6 s a step): the all-linear run landed at 19:51; then the confirmation, per-layer activation's rate bracket:
docs/results/scorers.sh all-linear score=activation,spread=per-layer  # resumed from step 940 at 19:24, landed 19:51
docs/results/scorers.sh placement # now also the all-linear selection
docs/results/scorers.sh versus    # the paired tests, with the all-linear run
docs/results/scorers.sh bracket "neft[score=activation,spread=per-layer]:match-lora:8"  # started 19:51; 4.5e-3 landed 21:27 (paused 20:23-20:32 for a CI run); 4.05e-2 stopped at step 564 (21:47), kept; resumed 21:49, stopped at step 846 (21:59), kept; resumed 2026-12-07 22:32 UTC on a 2-core AMD EPYC (Zen 3, family 25 model 1: AVX2, no AVX-512, no AMX), THREADS=2, alone
# (about 3.1 s a step with validation): 4.05e-2 landed at 22:58 (plateau), so 1.35e-2 is bracketed; then random rows' bracket:
docs/results/scorers.sh versus    # the paired tests, with per-layer activation's row back in the folder's table
docs/results/scorers.sh bracket neft-random:match-lora:8  # started 22:58 (trains 1.35e-2 too: the bracket's three rates live in one folder); 1.35e-2 landed 00:02 (2026-12-08), 4.5e-3 started, paused 00:02 for a CI run; resumed 00:22, 4.5e-3 stopped at step 940 (00:56), kept; resumed 00:58, stopped at step 1222 (01:08), kept; resumed 2026-12-08 01:53 UTC on a 2-core Intel Xeon (family 6 model 167: AVX-512, avx512_bf16, AMX), THREADS=2, alone (about 1.9 s a step with validation): 4.5e-3 landed at 02:00 (plateau), 4.05e-2 started, paused 02:00-02:13 for a CI run (passed), landed 02:50 (max_steps); 1.35e-2 is bracketed
docs/results/scorers.sh versus    # the converged folder first now: the screen keeps the converged seed-0 random rows as its reference
docs/results/scorers.sh seeds "neft[score=activation,spread=per-layer]:match-lora:8" 1  # started 02:50 (confirmation step 2); seed 1 landed 03:35, seed 2 landed 04:19
# 2026-12-08 02:55: an exploratory paired test (not a protocol test; BLEU and chrF, the harness's 1,000 resamples) of random rows
# at 4.05e-2 (a bracket training, so `report` does not pair it) against every seed-0 run of this folder, and against LoRA:
.venv/bin/python -c '
import glob; from pathlib import Path; from peft_neft.compare.results import read_outputs; from peft_neft.tasks import get_task
d, t = Path("docs/results/scorers-multi30k-en-fr/outputs"), get_task("translation")
r = read_outputs(d / "neft-random_match-lora_8@seed0@lr0.0405.jsonl")
for f in sorted(glob.glob(f"{d}/*@seed0.jsonl.gz")) + ["docs/results/converged-multi30k-en-fr/outputs/lora_8@seed0.jsonl.gz"]:
    o = read_outputs(Path(f[:-3])); print(Path(f).name, t.paired_test(o["hypothesis"], r["hypothesis"], r["reference"], char_level=False))'
docs/results/scorers.sh versus    # with per-layer activation's seed 1
docs/results/scorers.sh versus    # with per-layer activation's seed 2
