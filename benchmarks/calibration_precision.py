"""Does the calibration's precision change which neurons NeFT selects? Overlaps measured side by side.

The demo's calibration (SmolLM2-135M, Django en->fr, the compare prompts, 8 full fine-tuning steps at
5e-5, batch 8) is run in float32 for seeds 0 and 1, and under bf16 autocast for seed 0 (what compare did
before it calibrated in float32); optionally also with more steps. Each is turned into the selection at the
LoRA-r8 budget, and the overlaps (the paper's Table 5 measure) are printed: float32 seed 0 vs seed 1 is the
noise a selection has anyway; float32 vs bf16 of the same seed is what the precision adds.

    python benchmarks/calibration_precision.py [--steps 8 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from peft_neft.embedded_model import default_model_dir, load_model_and_tokenizer  # noqa: E402
from peft_neft.selection import Budget, calibrate, overlap, select_neurons  # noqa: E402
from peft_neft.tasks import django_translation_pairs, encode_pairs, get_task, make_collator  # noqa: E402
from peft_neft.training.precision import Precision  # noqa: E402


def selection(path: Path, rows: list[dict], collator, steps: int, seed: int, dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    start = time.perf_counter()
    with Precision(torch.device("cpu"), dtype, True).autocast():
        scores = calibrate(model, rows, collate_fn=collator, steps=steps, lr=5e-5, batch_size=8, seed=seed,
                           progress=False)
    seconds = time.perf_counter() - start
    return select_neurons(scores, budget=Budget.from_lora(model, 8)), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[8], help="calibration lengths K to measure")
    parser.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "calibration_precision.json")
    args = parser.parse_args(argv)
    path = default_model_dir()
    _, tokenizer = load_model_and_tokenizer(path)
    train = django_translation_pairs("fr")["train"]
    rows = encode_pairs(tokenizer, get_task("translation").instruction_for("en", "fr"), train["source"],
                        train["target"], 256, 48)
    collator = make_collator(tokenizer)
    native = Precision.resolve("cpu", "bfloat16").native
    results = []
    for steps in args.steps:
        runs = {name: selection(path, rows, collator, steps, seed, dtype)
                for name, seed, dtype in (("fp32 seed 0", 0, torch.float32), ("fp32 seed 1", 1, torch.float32),
                                          ("bf16 seed 0", 0, torch.bfloat16))}
        sel = {name: s for name, (s, _) in runs.items()}
        row = {"steps": steps, "neurons": sel["fp32 seed 0"].num_neurons,
               "fp32 seed0 vs seed1": overlap(sel["fp32 seed 0"], sel["fp32 seed 1"]),
               "fp32 vs bf16 (seed 0)": overlap(sel["fp32 seed 0"], sel["bf16 seed 0"]),
               "seconds": {name: s for name, (_, s) in runs.items()}}
        results.append(row)
        print(f"K={steps}: {row['neurons']} neurons; overlap fp32 seed 0 vs seed 1 {row['fp32 seed0 vs seed1']:.3f}, "
              f"fp32 vs bf16 {row['fp32 vs bf16 (seed 0)']:.3f} (bf16 {'native' if native else 'emulated'})", flush=True)
    print(bc.table(["K", "neurons", "fp32 s0 vs s1", "fp32 vs bf16"],
                   [[r["steps"], r["neurons"], r["fp32 seed0 vs seed1"], r["fp32 vs bf16 (seed 0)"]] for r in results]))
    bc.write_json(args.out, {"command": bc.command_line(), "machine": bc.machine(),
                             "bf16": "native" if native else "emulated", "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
