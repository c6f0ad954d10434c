"""Where a training step's time goes: torch.profiler's top operators for NeFT, LoRA and the floor.

    python benchmarks/profile_step.py
    python benchmarks/profile_step.py --device cuda --dtype bfloat16 --random-weights --batch 8 --seq 512
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--delta-dtype", default="float32")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--budget", type=float, default=9, help="percent of all params, on up/down_proj")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rows", type=int, default=12, help="operators listed per method")
    parser.add_argument("--out", type=Path, default=None, help="text file for the tables")
    args = parser.parse_args(argv)
    base = bc.load_base(args.device, getattr(torch, args.dtype), args.random_weights)
    batch = bc.make_batch(base.config.vocab_size, args.batch, args.seq, args.device)
    targets = bc.target_names(base, bc.DEFAULT_TARGET_MODULES)
    budget = int(args.budget / 100 * bc.total_params(base))
    methods = [bc.build_floor(base, "floor"), bc.build_neft(base, "neft", targets, budget, args.delta_dtype),
               bc.build_lora(base, "lora", targets, budget)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    sort_key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    report = []
    for method in methods:
        bc.train_step(method, batch)
        bc.train_step(method, batch)
        bc.sync(args.device)
        with profile(activities=activities) as prof:
            bc.train_step(method, batch)
            bc.sync(args.device)
        text = prof.key_averages().table(sort_by=sort_key, row_limit=args.rows)
        report.append(f"== {method.name} ({args.budget:g}% on up/down_proj, {args.device}, {args.dtype}, "
                      f"batch {args.batch} x seq {args.seq})\n{text}")
        print(report[-1])
    if args.out:
        from peft_neft.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            Path(tmp).write_text("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
