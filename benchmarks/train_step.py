"""Training step time and peak memory: NeFT vs LoRA, full FT, the paper's masked full FT, SHiRA,
Super-Tuning and the floor, at equal trainable parameters, interleaved in one run.

    python benchmarks/train_step.py                       # SmolLM2-135M (real weights), CPU, fp32
    python benchmarks/train_step.py --device cuda --dtype bfloat16 --random-weights --batch 8 --seq 512
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402

SCOPES = {"up_down": bc.DEFAULT_TARGET_MODULES, "all_linear": bc.ALL_LINEARS}


def method_builders(base, budgets: dict[str, list[float]], delta_dtype: str) -> dict:
    """Name -> zero-argument builder. masked / SHiRA / Super-Tuning run at the largest up/down budget."""
    n_total = bc.total_params(base)
    builders = {"floor": functools.partial(bc.build_floor, base, "floor"),
                "full": functools.partial(bc.build_full, base, "full")}
    for scope, pcts in budgets.items():
        targets = bc.target_names(base, SCOPES[scope])
        for pct in pcts:
            budget = int(pct / 100 * n_total)
            builders[f"neft_{pct:g}%_{scope}"] = functools.partial(
                bc.build_neft, base, f"neft_{pct:g}%_{scope}", targets, budget, delta_dtype)
            builders[f"lora_{pct:g}%_{scope}"] = functools.partial(
                bc.build_lora, base, f"lora_{pct:g}%_{scope}", targets, budget)
    if budgets.get("up_down"):
        top = max(budgets["up_down"])
        targets = bc.target_names(base, SCOPES["up_down"])
        budget = int(top / 100 * n_total)
        for kind, fn in (("masked", bc.build_masked), ("shira", bc.build_shira), ("supertuning", bc.build_supertuning)):
            builders[f"{kind}_{top:g}%_up_down"] = functools.partial(fn, base, f"{kind}_{top:g}%_up_down", targets, budget)
    return builders


def ratio_rows(results: dict, budgets: dict[str, list[float]], key: str) -> list[list]:
    top = max(budgets.get("up_down") or [0])
    rows = []
    for scope, pcts in budgets.items():
        for pct in pcts:
            neft = results[f"neft_{pct:g}%_{scope}"][key]
            row = [f"{pct:g}% {scope}", bc.ratio(neft, results[f"lora_{pct:g}%_{scope}"][key]),
                   bc.ratio(neft, results["full"][key])]
            for kind in ("masked", "shira", "supertuning"):
                other = results.get(f"{kind}_{top:g}%_up_down") if (scope, pct) == ("up_down", top) else None
                row.append(bc.ratio(neft, other[key]) if other else "")
            row.append(bc.ratio(neft, results["floor"][key]))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--delta-dtype", default="float32", help="NeFT delta dtype (default float32, as peft's LoRA)")
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2's architecture with random weights")
    parser.add_argument("--hidden", type=int, default=None, help="a tiny random Llama of this width instead")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--budgets", type=float, nargs="*", default=[1, 3, 9],
                        help="NeFT/LoRA budgets on up/down_proj, percent of all parameters")
    parser.add_argument("--all-linear-budgets", type=float, nargs="*", default=[9],
                        help="NeFT/LoRA budgets on all block Linears (q,k,v,o,gate,up,down)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default docs/performance/train_step_<device>.json)")
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda"):
        bc.reexec_with_mmap_threshold()
    dtype = getattr(torch, args.dtype)
    config = bc.tiny_llama_config(args.hidden) if args.hidden else None
    base = bc.load_base(args.device, dtype, args.random_weights, config)
    batch = bc.make_batch(base.config.vocab_size, args.batch, args.seq, args.device)
    budgets = {scope: pcts for scope, pcts in (("up_down", args.budgets), ("all_linear", args.all_linear_budgets)) if pcts}
    builders = method_builders(base, budgets, args.delta_dtype)

    results = bc.measure_methods(builders, batch, args.device, args.warmup, args.repeats, not args.no_memory)

    model_name = f"tiny Llama hidden {args.hidden}" if args.hidden else "SmolLM2-135M"
    print(f"\n{model_name} ({'random' if args.random_weights or args.hidden else 'real'} weights), {args.device}, {args.dtype}, "
          f"batch {args.batch} x seq {args.seq}, {args.repeats} repeats after {args.warmup} warm-up, medians")
    rows = [[n, r["trainable"], r["median_s"] * 1e3, r.get("peak_bytes", 0) / 2**20] for n, r in results.items()]
    print(bc.table(["method", "trainable", "step ms", "peak MiB"], rows))
    headers = ["NeFT budget", "/LoRA", "/full", "/masked", "/SHiRA", "/SuperTuning", "/floor"]
    time_ratios = ratio_rows(results, budgets, "median_s")
    print("\nstep-time ratios\n" + bc.table(headers, time_ratios))
    mem_ratios = []
    if not args.no_memory:
        mem_ratios = ratio_rows(results, budgets, "peak_bytes")
        print("\npeak-memory ratios\n" + bc.table(headers, mem_ratios))
    out = args.out or bc.RESULTS_DIR / f"train_step_{args.device.split(':')[0]}.json"
    bc.write_json(out, {"command": bc.command_line(), "machine": bc.machine(), "batch": args.batch, "seq": args.seq,
                        "dtype": args.dtype, "random_weights": args.random_weights, "results": results,
                        "ratio_headers": headers, "time_ratios": time_ratios, "memory_ratios": mem_ratios})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
