"""What each scorer's calibration costs, against LoRA r=8 training on the same batches: time and peak memory.

The embedded SmolLM2-135M in float32 on the CPU, K batches of Multi30k en->fr pairs (the compare prompts).
Each job runs in its own subprocess, so one job's allocations cannot hide another's peak:
- ``lora``: LoRA r=8 on every block Linear, K AdamW steps (one per batch);
- ``cosine``, ``movement``: the short full fine-tune of K AdamW steps (one run gives both; each is timed);
- ``taylor``, ``gradient``: K forward+backward passes, gradients reduced per row in a hook and freed;
- ``activation``: K forward passes.

Peak memory is the kernel's peak resident set size (``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs`` once the model and data are loaded), so it counts the model's weights plus all that the
job adds; "added" subtracts the resident size just before the job. Every job imports the modules any job needs
(peft, transformers' Trainer, the scorers) before the window opens, so no job's peak counts imports. glibc serves allocations over 64 KiB by
``mmap`` (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the resident set at once.

    python benchmarks/calibration_cost.py [--batches 4] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

JOBS = ("lora", "cosine", "movement", "taylor", "gradient", "activation")
RESULTS = bc.ROOT / "docs" / "results" / "calibration-cost.md"
DATA = bc.ROOT.parent / "shared" / "data" / "multi30k"


def _rows(tokenizer, count: int, data: Path) -> list[dict]:
    from peft_neft.tasks import encode_pairs, get_task

    with gzip.open(data / "train.en.gz", "rt") as en, gzip.open(data / "train.fr.gz", "rt") as fr:
        pairs = [(e.strip(), f.strip()) for e, f, _ in zip(en, fr, range(count))]
    sources, targets = zip(*pairs)
    return encode_pairs(tokenizer, get_task("translation").instruction_for("en", "fr"), list(sources), list(targets),
                        256, 128)


def _lora(model, rows, collate, args) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from peft_neft.selection.batch_scores import _batches, _loader

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                  target_modules=list(bc.ALL_LINEARS)))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    peft_model.train()
    for batch in _batches(_loader(rows, args.batch_size, 0, collate), args.batches):
        peft_model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def child(args: argparse.Namespace) -> None:
    """Run one job and print its measurements as one JSON line."""
    import torch

    from peft_neft.embedded_model import load_model_and_tokenizer
    from peft_neft.selection import get_scorer
    from peft_neft.tasks import make_collator

    for module in ("peft", "transformers.trainer", "peft_neft.training.trainer", "peft_neft.selection.calibration",
                   "peft_neft.selection.batch_scores"):  # every job's imports load before the window, for all jobs
        importlib.import_module(module)
    model, tokenizer = load_model_and_tokenizer()
    rows, collate = _rows(tokenizer, args.batches * args.batch_size, args.data), make_collator(tokenizer)
    gc.collect()
    before = bc._proc_status_kib("VmRSS") * 1024
    bc._reset_peak_rss()
    start = time.perf_counter()
    if args.child == "lora":
        _lora(model, rows, collate, args)
    else:
        get_scorer(args.child).score(model, rows, collate_fn=collate, steps=args.batches, batch_size=args.batch_size,
                                     lr=5e-5, seed=0, target_modules=["up_proj", "down_proj"], progress=False)
    seconds = time.perf_counter() - start
    peak = bc._proc_status_kib("VmHWM") * 1024
    print(json.dumps({"job": args.child, "seconds": seconds, "peak": peak, "added": peak - before,
                      "loaded": before, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4, help="K: batches (scorers) and optimizer steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--data", type=Path, default=DATA, help="the Multi30k folder (train.en.gz, train.fr.gz)")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=JOBS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if "lora" not in args.jobs:
        parser.error("--jobs needs lora: every ratio is against it")
    results = {}
    for job in args.jobs:
        command = [sys.executable, __file__, "--child", job, "--batches", str(args.batches), "--batch-size",
                   str(args.batch_size), "--data", str(args.data)]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, **{bc.MMAP_ENV: "65536"}))
        if done.returncode:
            sys.exit(f"{job} failed:\n{done.stderr[-3000:]}")
        results[job] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[job]), flush=True)  # each job's figures, also when a later one fails
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    from peft_neft.atomic import atomic_path
    from peft_neft.selection import SCORERS

    lora = results["lora"]
    mib = 2 ** 20
    rows = [[job, "LoRA r=8 training" if job == "lora" else SCORERS[job].needs, r["seconds"],
             bc.ratio(r["seconds"], lora["seconds"]), round(r["peak"] / mib), bc.ratio(r["peak"], lora["peak"]),
             round(r["added"] / mib), bc.ratio(r["added"], lora["added"])] for job, r in results.items()]
    table = bc.table(["job", "needs", "seconds", "time / LoRA", "peak RSS MiB", "peak / LoRA", "added MiB",
                      "added / LoRA"], rows)
    info = bc.machine()
    text = f"""# Calibration cost: each scorer against LoRA r=8 training on the same batches

`{bc.command_line()}` (git {info.get('git', '?')}): SmolLM2-135M-Instruct (embedded), float32, CPU,
{args.batches} batches of {args.batch_size} Multi30k en->fr training pairs (the compare prompts), target modules
up_proj/down_proj. LoRA r=8 adapts every block Linear and takes {args.batches} AdamW steps on the same pairs;
cosine and movement train all parameters for {args.batches} AdamW steps (one run gives both scores; each row here
is its own run); taylor and gradient take {args.batches} forward+backward passes with no optimizer; activation
{args.batches} forward passes. Every job ran in its own process.

Peak memory: the kernel's peak resident set size (`VmHWM`, reset once the model and data were loaded), so it
holds the model's weights; "added" is that peak minus the resident size just before the job started (peft,
the Trainer and the scorers were imported before, in every job). Wall times are of one run each on a machine
whose 2 cores are shared with a background training: read them as rough ratios.

Machine: {info.get('cpu', '?')}, {info['cpu_count']} cores, {lora['threads']} torch threads, no GPU, shared with
a background training; torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}.

{table}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(text)
    print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
