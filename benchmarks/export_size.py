"""What exporting a NeFT adapter to LoRA costs: file sizes, the ranks it produces, and how exact it is.

    python benchmarks/export_size.py [--data ../shared/data/multi30k]

SmolLM2-135M (real weights), NeFT on up_proj/down_proj at the budget of a LoRA r=8 on the same
modules, two selections: the same number of random rows in every module ("uniform"), and the rows
with the largest gradients on Multi30k en->fr ("gradient", 4 batches of 8 pairs; skipped without the
data). Deltas are random (std 0.02): sizes do not depend on values. For each: the NeFT and exported
LoRA file sizes, the per-module LoRA ranks (k), how many modules exceed each of vLLM's max_lora_rank
choices, and the largest logit difference between the NeFT model and plain peft loading the export,
unmerged and merged, with the base in float32 and in bfloat16 (deltas float32).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank choices (v0.14: these and 1)


def gradient_selection(base, data: Path, budget: int):
    from transformers import AutoTokenizer

    from peft_neft import gradient_scores, select_neurons
    from peft_neft.embedded_model import default_model_dir
    from peft_neft.tasks import TASKS, encode_pairs, load_pairs, make_collator

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    pairs = load_pairs(data / "train.en.gz", data / "train.fr.gz", limit=32)
    dataset = encode_pairs(tokenizer, TASKS["translation"].instruction_for("en", "fr"), pairs["source"], pairs["target"])
    scores = gradient_scores(base, dataset, collate_fn=make_collator(tokenizer), batches=4, batch_size=8,
                             target_modules=list(bc.UP_DOWN))
    return select_neurons(scores, num_params=budget).rows


def logits(base, folder: Path, dtype: torch.dtype, merged: bool) -> torch.Tensor:
    """Logits of ``base`` (in ``dtype``) with the adapter in ``folder`` loaded by peft, merged or not."""
    from peft import PeftModel

    ids = torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(0))
    model = PeftModel.from_pretrained(copy.deepcopy(base).to(dtype), folder).eval()
    if merged:
        model = model.merge_and_unload()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def exactness(base, neft_dir: Path, lora_dir: Path) -> dict[str, float]:
    """Max |logit difference| NeFT vs exported LoRA; for scale, each in bf16 vs NeFT in fp32."""
    diffs = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for merged in (False, True):
            neft = logits(base, neft_dir, dtype, merged)
            lora = logits(base, lora_dir, dtype, merged)
            diffs[f"{label}{' merged' if merged else ''}"] = float((neft - lora).abs().max())
            if label == "fp32" and not merged:
                reference = neft
    for name, folder in (("NeFT", neft_dir), ("LoRA", lora_dir)):
        diffs[f"bf16 {name} vs fp32 NeFT"] = float((logits(base, folder, torch.bfloat16, False) - reference).abs().max())
    return diffs


def main(argv: list[str] | None = None) -> int:
    import peft_neft
    from peft import get_peft_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bc.ROOT.parent / "shared" / "data" / "multi30k",
                        help="the Multi30k folder (train.en.gz, train.fr.gz) for the gradient selection")
    parser.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "export_size.json")
    args = parser.parse_args(argv)
    base = bc.load_base("cpu", torch.float32, random_weights=False).eval()
    targets = bc.target_names(base, bc.UP_DOWN)
    budget = peft_neft.budget_from_lora(base, 8, target_modules=list(bc.UP_DOWN))
    selections = {"uniform": bc.neft_rows(base, targets, budget)}
    if (args.data / "train.en.gz").is_file():
        selections["gradient"] = gradient_selection(base, args.data, budget)
    else:
        print(f"no Multi30k at {args.data}: gradient selection skipped")
    rows, detail = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        bc.build_lora(base, "lora", targets, budget).model.save_pretrained(Path(tmp) / "lora_r8")
        lora_r8_bytes = (Path(tmp) / "lora_r8" / "adapter_model.safetensors").stat().st_size
        for name, neurons in selections.items():
            model = get_peft_model(bc.shared_copy(base), peft_neft.NeFTConfig(neurons=neurons))
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            neft_dir, lora_dir = Path(tmp) / f"neft_{name}", Path(tmp) / f"lora_{name}"
            model.save_pretrained(neft_dir)
            peft_neft.export_lora(neft_dir, lora_dir, base=base)
            ks = sorted(int(r.numel()) for r in neurons.values())
            diffs = exactness(base, neft_dir, lora_dir)
            over = {r: sum(k > r for k in ks) for r in VLLM_RANKS}
            neft_bytes = (neft_dir / "adapter_model.safetensors").stat().st_size
            lora_bytes = (lora_dir / "adapter_model.safetensors").stat().st_size
            rows.append([name, len(ks), sum(r.numel() * base.get_submodule(n).in_features for n, r in neurons.items()),
                         neft_bytes, lora_bytes, lora_bytes / neft_bytes, ks[0], statistics.median(ks), ks[-1],
                         ", ".join(f">{r}: {c}" for r, c in over.items() if c)])
            detail[name] = {"ranks": {n: int(r.numel()) for n, r in neurons.items()}, "modules_over_vllm_rank": over, "max_abs_logit_diff": diffs}
            print(name, "max |logit diff| NeFT vs exported LoRA:", {k: f"{v:.3g}" for k, v in diffs.items()})
    headers = ["selection", "modules", "trainable", "NeFT bytes", "LoRA export bytes", "export/NeFT", "min k", "median k",
               "max k", "modules over vLLM rank"]
    print(f"\nSmolLM2-135M, up/down, budget of LoRA r=8 ({budget} params); LoRA r=8 file: {lora_r8_bytes} bytes")
    print(bc.table(headers, rows))
    bc.write_json(args.out, {"command": bc.command_line(), "machine": bc.machine(), "budget": budget,
                             "lora_r8_bytes": lora_r8_bytes, "headers": headers, "rows": rows, "detail": detail})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
