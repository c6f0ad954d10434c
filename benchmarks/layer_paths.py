"""The effect of the layer optimisation on one SmolLM2-sized Linear: forward + backward time and the
bytes autograd saves, for the previous out-of-place ``index_add`` path and the current one-node path.

    python benchmarks/layer_paths.py
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from peft_neft.tuner.row_update import linear_with_rows  # noqa: E402


def previous_path(x, weight, delta, rows):
    """The layer's first implementation: base GEMM, update GEMM, out-of-place index_add."""
    return F.linear(x, weight).index_add(-1, rows, F.linear(x.to(delta.dtype), delta))


def current_path(x, weight, delta, rows):
    return linear_with_rows(x, weight, None, delta, rows)


def floor_path(x, weight, delta, rows):
    return F.linear(x, weight)


def step(fn, x, weight, delta, rows, grad):
    out = fn(x, weight, delta, rows)
    out.backward(grad)
    x.grad = delta.grad = None


def saved_bytes(fn, x, weight, delta, rows) -> int:
    """Bytes of tensors autograd saves that are not the frozen weight itself."""
    total = []

    def pack(t):
        if t.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr():
            total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, weight, delta, rows)
    return sum(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--in-features", type=int, default=576)
    parser.add_argument("--out-features", type=int, default=1536)
    parser.add_argument("--fraction", type=float, default=0.25, help="share of rows selected")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    k = int(args.fraction * args.out_features)
    x = torch.randn(args.tokens, args.in_features, device=args.device, requires_grad=True)
    weight = torch.randn(args.out_features, args.in_features, device=args.device)
    delta = torch.zeros(k, args.in_features, device=args.device, requires_grad=True)
    rows = torch.randperm(args.out_features, device=args.device)[:k].sort().values
    grad = torch.randn(args.tokens, args.out_features, device=args.device)
    paths = {"floor (x grad only)": floor_path, "previous: index_add": previous_path, "current: one node": current_path}
    timings = bc.interleaved_medians({n: functools.partial(step, fn, x, weight, delta, rows, grad)
                                      for n, fn in paths.items()}, args.device, args.warmup, args.repeats)
    rows_out = [[n, timings[n]["median_s"] * 1e3, timings[n]["median_s"] / timings["floor (x grad only)"]["median_s"],
                 saved_bytes(fn, x, weight, delta, rows)] for n, fn in paths.items()]
    print(f"\nLinear {args.in_features}->{args.out_features}, {k} rows selected, {args.tokens} tokens, {args.device}, "
          f"forward+backward, {args.repeats} repeats after {args.warmup} warm-up, medians")
    print(bc.table(["path", "ms", "/floor", "saved bytes (besides W)"], rows_out))
    out = args.out or bc.RESULTS_DIR / f"layer_paths_{args.device.split(':')[0]}.json"
    bc.write_json(out, {"command": bc.command_line(), "machine": bc.machine(), "rows": rows_out,
                        "timings": timings})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
