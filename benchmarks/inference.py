"""Inference latency (one forward pass, no grad): base, NeFT unmerged / merged, LoRA unmerged / merged.

    python benchmarks/inference.py
    python benchmarks/inference.py --device cuda --dtype bfloat16 --random-weights --batch 8 --seq 512

"merged" is ``merge_adapter()``: the adapter wrappers stay in the model (the harder case; after
``merge_and_unload()`` the model is the base model's module tree). Adapters are trained-looking
(random, non-zero deltas / LoRA B) so that merging really changes the weights.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402


def _randomize_adapter(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 1e-3)
    model.eval()


def build_variants(base: torch.nn.Module, pct: float) -> dict[str, torch.nn.Module]:
    """Merged variants get their own weights (a deep copy): merging must not touch the shared base."""
    targets = bc.target_names(base, bc.DEFAULT_TARGET_MODULES)
    budget = int(pct / 100 * bc.total_params(base))
    variants = {"base": bc.shared_copy(base).eval()}
    for kind, build in (("neft", bc.build_neft), ("lora", bc.build_lora)):
        unmerged = build(base, kind, targets, budget).model
        _randomize_adapter(unmerged)
        variants[f"{kind}_unmerged"] = unmerged
        merged = build(copy.deepcopy(base), kind, targets, budget).model
        _randomize_adapter(merged)
        merged.merge_adapter()
        variants[f"{kind}_merged"] = merged
    return variants


def forward(model: torch.nn.Module, ids: torch.Tensor) -> None:
    with torch.inference_mode():
        model(input_ids=ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2's architecture with random weights")
    parser.add_argument("--budget", type=float, default=9, help="NeFT/LoRA budget on up/down_proj, %% of all params")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    base = bc.load_base(args.device, getattr(torch, args.dtype), args.random_weights)
    ids = bc.make_batch(base.config.vocab_size, args.batch, args.seq, args.device)["input_ids"]
    variants = build_variants(base, args.budget)
    timings = bc.interleaved_medians({n: functools.partial(forward, m, ids) for n, m in variants.items()},
                                     args.device, args.warmup, args.repeats)
    base_s = timings["base"]["median_s"]
    rows = [[n, t["median_s"] * 1e3, t["median_s"] / base_s] for n, t in timings.items()]
    print(f"\nSmolLM2-135M ({'random' if args.random_weights else 'real'} weights), {args.device}, {args.dtype}, "
          f"forward of batch {args.batch} x seq {args.seq}, NeFT/LoRA at {args.budget:g}% on up/down_proj, "
          f"{args.repeats} repeats after {args.warmup} warm-up, medians")
    print(bc.table(["variant", "forward ms", "/base"], rows))
    neft_lora = timings["neft_unmerged"]["median_s"] / timings["lora_unmerged"]["median_s"]
    print(f"NeFT unmerged / LoRA unmerged: {neft_lora:.3f}")
    out = args.out or bc.RESULTS_DIR / f"inference_{args.device.split(':')[0]}.json"
    bc.write_json(out, {"command": bc.command_line(), "machine": bc.machine(), "batch": args.batch, "seq": args.seq,
                        "dtype": args.dtype, "random_weights": args.random_weights, "budget_pct": args.budget,
                        "results": timings, "ratios_to_base": {n: r[2] for n, r in zip(timings, rows)},
                        "neft_unmerged_over_lora_unmerged": neft_lora})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
