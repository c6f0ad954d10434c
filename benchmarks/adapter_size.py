"""Adapter file size vs the ideal ``sum(k * in * bytes + 8 * k)`` (deltas + int64 row indices).

    python benchmarks/adapter_size.py

Saves NeFT adapters of SmolLM2-135M's shapes (random weights: the size does not depend on values)
with ``save_pretrained`` and compares ``adapter_model.safetensors`` with the ideal; LoRA at equal
trainable parameters is listed for reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402

SCOPES = {"up_down": bc.DEFAULT_TARGET_MODULES, "all_linear": bc.ALL_LINEARS}


def ideal_bytes(model: torch.nn.Module, bytes_per_value: int) -> int:
    from peft_neft.tuner.layer import NeFTLayer

    return sum(k * m.in_features * bytes_per_value + 8 * k for m in model.modules() if isinstance(m, NeFTLayer)
               for k in [m.neft_rows["default"].numel()])


def saved_bytes(model, folder: Path) -> int:
    model.save_pretrained(folder)
    return (folder / "adapter_model.safetensors").stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[1, 3, 9])
    parser.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "adapter_size.json")
    args = parser.parse_args(argv)
    base = bc.load_base("cpu", torch.float32, random_weights=True)
    n_total = bc.total_params(base)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scope, suffixes in SCOPES.items():
            targets = bc.target_names(base, suffixes)
            for pct in args.budgets:
                budget = int(pct / 100 * n_total)
                for dtype, nbytes in (("float32", 4), ("bfloat16", 2)):
                    neft = bc.build_neft(base, "neft", targets, budget, delta_dtype=dtype)
                    size = saved_bytes(neft.model, Path(tmp) / f"neft_{scope}_{pct:g}_{dtype}")
                    ideal = ideal_bytes(neft.model, nbytes)
                    rows.append([f"{pct:g}% {scope}", dtype, neft.trainable, size, ideal, size / ideal, ""])
                lora = bc.build_lora(base, "lora", targets, budget)
                rows[-1][-1] = saved_bytes(lora.model, Path(tmp) / f"lora_{scope}_{pct:g}")
    headers = ["budget", "delta dtype", "trainable", "file bytes", "ideal bytes", "file/ideal", "LoRA fp32 bytes"]
    print("\nNeFT adapter_model.safetensors vs ideal sum(k*in*bytes + 8*k), SmolLM2-135M shapes")
    print(bc.table(headers, rows))
    bc.write_json(args.out, {"command": bc.command_line(), "machine": bc.machine(), "headers": headers, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
