"""How NeFT's step time and peak memory grow with the selected rows and with model width.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --device cuda --dtype bfloat16 --random-weights --batch 8 --seq 512

Rows: NeFT and LoRA (equal params) at 0.5..20% of all parameters on up/down_proj of SmolLM2-135M,
with the floor as reference. Width: tiny random Llamas (4 layers) of growing hidden size, NeFT and
LoRA at 9% on up/down_proj, full fine-tuning and the floor. Writes a table, JSON and a PNG.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402


def rows_builders(base, pcts: list[float]) -> dict:
    targets = bc.target_names(base, bc.DEFAULT_TARGET_MODULES)
    n_total = bc.total_params(base)
    builders = {"floor": functools.partial(bc.build_floor, base, "floor")}
    for pct in pcts:
        budget = int(pct / 100 * n_total)
        builders[f"neft_{pct:g}%"] = functools.partial(bc.build_neft, base, f"neft_{pct:g}%", targets, budget)
        builders[f"lora_{pct:g}%"] = functools.partial(bc.build_lora, base, f"lora_{pct:g}%", targets, budget)
    return builders


def width_builders(base, pct: float) -> dict:
    targets = bc.target_names(base, bc.DEFAULT_TARGET_MODULES)
    budget = int(pct / 100 * bc.total_params(base))
    return {"floor": functools.partial(bc.build_floor, base, "floor"),
            "full": functools.partial(bc.build_full, base, "full"),
            "neft": functools.partial(bc.build_neft, base, "neft", targets, budget),
            "lora": functools.partial(bc.build_lora, base, "lora", targets, budget)}


def plot(rows_result: dict, pcts: list[float], width_result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for key, ax, label in (("median_s", axes[0][0], "step time (ms)"), ("peak_bytes", axes[1][0], "peak memory (MiB)")):
        scale = 1e3 if key == "median_s" else 1 / 2**20
        for kind in ("neft", "lora"):
            ax.plot(pcts, [rows_result[f"{kind}_{p:g}%"][key] * scale for p in pcts], "o-", label=kind)
        ax.axhline(rows_result["floor"][key] * scale, color="gray", ls="--", label="floor")
        ax.set_xscale("log")
        ax.set_xlabel("trainable params (% of all), up/down_proj")
        ax.set_ylabel(label)
        ax.legend()
    hidden = sorted(width_result, key=int)
    for key, ax, label in (("median_s", axes[0][1], "step time (ms)"), ("peak_bytes", axes[1][1], "peak memory (MiB)")):
        scale = 1e3 if key == "median_s" else 1 / 2**20
        for kind in ("floor", "neft", "lora", "full"):
            ax.plot([int(h) for h in hidden], [width_result[h][kind][key] * scale for h in hidden], "o-", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden size (tiny Llama, 4 layers)")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from peft_neft.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2's architecture with random weights")
    parser.add_argument("--pcts", type=float, nargs="+", default=[0.5, 2, 5, 20])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON path; the PNG goes beside it")
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda"):
        bc.reexec_with_mmap_threshold()
    dtype = getattr(torch, args.dtype)
    setup = (f"{args.device}, {args.dtype}, batch {args.batch} x seq {args.seq}, "
             f"{args.repeats} repeats after {args.warmup} warm-up, medians")

    base = bc.load_base(args.device, dtype, args.random_weights)
    batch = bc.make_batch(base.config.vocab_size, args.batch, args.seq, args.device)
    rows_result = bc.measure_methods(rows_builders(base, args.pcts), batch, args.device, args.warmup, args.repeats)
    del base
    floor = rows_result["floor"]
    print(f"\nRows: SmolLM2-135M ({'random' if args.random_weights else 'real'} weights), {setup}")
    table = [[f"{p:g}%", rows_result[f"neft_{p:g}%"]["trainable"], rows_result[f"neft_{p:g}%"]["median_s"] * 1e3,
              rows_result[f"neft_{p:g}%"]["median_s"] / floor["median_s"],
              rows_result[f"neft_{p:g}%"]["median_s"] / rows_result[f"lora_{p:g}%"]["median_s"],
              rows_result[f"neft_{p:g}%"]["peak_bytes"] / 2**20,
              bc.ratio(rows_result[f"neft_{p:g}%"]["peak_bytes"], rows_result[f"lora_{p:g}%"]["peak_bytes"])]
             for p in args.pcts]
    print(bc.table(["budget", "trainable", "NeFT ms", "NeFT/floor", "NeFT/LoRA", "NeFT MiB", "mem NeFT/LoRA"], table))

    width_result = {}
    for hidden in args.widths:
        tiny = bc.load_base(args.device, dtype, True, bc.tiny_llama_config(hidden))
        tiny_batch = bc.make_batch(tiny.config.vocab_size, args.batch, args.seq, args.device)
        width_result[str(hidden)] = bc.measure_methods(width_builders(tiny, 9), tiny_batch, args.device,
                                                       args.warmup, args.repeats)
        del tiny
    print(f"\nWidth: tiny random Llamas (4 layers), NeFT/LoRA at 9% on up/down_proj, {setup}")
    wtable = []
    for h, r in width_result.items():
        wtable.append([h, r["neft"]["median_s"] * 1e3, r["neft"]["median_s"] / r["floor"]["median_s"],
                       r["neft"]["median_s"] / r["lora"]["median_s"], r["neft"]["median_s"] / r["full"]["median_s"],
                       bc.ratio(r["neft"]["peak_bytes"], r["lora"]["peak_bytes"]),
                       bc.ratio(r["neft"]["peak_bytes"], r["full"]["peak_bytes"])])
    print(bc.table(["hidden", "NeFT ms", "/floor", "/LoRA", "/full", "mem /LoRA", "mem /full"], wtable))

    out = args.out or bc.RESULTS_DIR / f"scaling_{args.device.split(':')[0]}.json"
    bc.write_json(out, {"command": bc.command_line(), "machine": bc.machine(), "setup": setup,
                        "random_weights": args.random_weights, "rows": rows_result, "width": width_result,
                        "rows_table": table, "width_table": wtable})
    plot(rows_result, args.pcts, width_result, out.with_suffix(".png"), f"NeFT scaling, {setup}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
