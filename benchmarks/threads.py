"""One CPU thread against all of torch's threads for a training step of NeFT and LoRA (equal parameters),
interleaved in one run on SmolLM2-135M with the engine's settings (target-only loss, Multi30k-shaped batch).

Decides the demo's default: torch's own thread count, unless the cores are shared with other jobs.

    python benchmarks/threads.py
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402
from engine import add_step_arguments, multi30k_batch, step  # noqa: E402


def _with_threads(threads: int, fn) -> float:
    torch.set_num_threads(threads)
    return fn()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "threads_cpu.json")
    args = parser.parse_args(argv)
    most = torch.get_num_threads()
    base = bc.load_base("cpu", torch.float32, random_weights=False)
    batch = multi30k_batch(base.config.vocab_size, args.batch, args.seq, args.target, torch.device("cpu"))
    targets = bc.target_names(base, bc.DEFAULT_TARGET_MODULES)
    modules = dict(base.named_modules())
    budget = args.lora_rank * sum(modules[n].in_features + modules[n].out_features for n in targets)
    methods = {"neft": bc.build_neft(base, "neft", targets, budget), "lora": bc.build_lora(base, "lora", targets, budget)}
    fns = {f"{name}_{threads}t": functools.partial(_with_threads, threads,
                                                   functools.partial(step, method, batch, None, True))
           for name, method in methods.items() for threads in (1, most)}
    results = bc.interleaved_medians(fns, "cpu", args.warmup, args.repeats)
    torch.set_num_threads(most)
    med = {n: r["median_s"] for n, r in results.items()}
    ratios = {f"{name} {most} threads / 1 thread": med[f"{name}_{most}t"] / med[f"{name}_1t"] for name in methods}
    print(f"\nSmolLM2-135M, cpu, float32, batch {args.batch} x {args.seq} tokens ({args.target} labelled), "
          f"{args.repeats} repeats after {args.warmup} warm-up, medians")
    print(bc.table(["run", "step ms"], [[n, r["median_s"] * 1e3] for n, r in results.items()]))
    print("\n" + bc.table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    bc.write_json(args.out, {"command": bc.command_line(), "machine": bc.machine(), "batch": args.batch, "seq": args.seq,
                             "target_tokens": args.target, "lora_rank": args.lora_rank, "results": results,
                             "ratios": ratios})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
