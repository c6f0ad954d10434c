"""The training engine's step against the old one: NeFT, LoRA (equal parameters, same modules) and full
fine-tuning, interleaved in one run on SmolLM2-135M with Multi30k-shaped batches.

- old: float32 weights, the loss over full-vocabulary logits at every position (``model(**batch).loss``);
- new: the engine's settings, frozen weights in the compute dtype (bfloat16 where the hardware runs it
  natively), trainable tensors in float32 under autocast (full fine-tuning keeps float32 master weights),
  and the LM head run only on labelled positions;
- new32 (only when the new dtype is bfloat16): the engine's settings in float32, so the bf16/fp32 step
  ratio is measured side by side in the same run.

A Multi30k en->fr example in SmolLM2's chat format is 60.5 tokens on average, 24.8 of them target tokens
(first 400 training pairs), so a batch is 8 rows of 60 tokens whose last 25 carry labels.

    python benchmarks/engine.py                      # CPU, dtype auto
    python benchmarks/engine.py --device cuda --batch 8
    python benchmarks/engine.py --attn-implementation eager   # attention as plain matmuls instead of SDPA
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import torch  # noqa: E402

from peft_neft.training.precision import Precision  # noqa: E402
from peft_neft.training.loss import causal_lm_target_loss  # noqa: E402


def multi30k_batch(vocab: int, batch: int, seq: int, target: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random tokens of Multi30k's shape: labels only on the last ``target`` positions of each row."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels = ids.clone()
    labels[:, : seq - target] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def step(method: bc.Method, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None, target_only: bool) -> float:
    """One optimizer step (or forward+backward only, for the floor) in the old or the new setting."""
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = causal_lm_target_loss(method.model, **batch) if target_only else method.model(**batch).loss
    loss.backward()
    if method.optimizer is not None:
        method.optimizer.step()
        method.optimizer.zero_grad(set_to_none=True)
    return loss.item()


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch shape, the LoRA budget and the timing rounds (shared with benchmarks/threads.py)."""
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=60)
    parser.add_argument("--target", type=int, default=25, help="labelled positions at the end of each row")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on up/down_proj; NeFT gets its parameter count")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="the new engine's compute dtype: auto, bfloat16 or float32")
    add_step_arguments(parser)
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"],
                        help="transformers' attention for every setting (default: sdpa, transformers' own default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default docs/performance/engine_<device>.json)")
    args = parser.parse_args(argv)
    precision = Precision.resolve(args.device, args.dtype)
    device, dtype = precision.device, precision.dtype
    bf16 = "native" if precision.native else "emulated (no AVX512-BF16/AMX: slow but correct)"
    base32 = bc.load_base(str(device), torch.float32, random_weights=False)
    base32.set_attn_implementation(args.attn_implementation)
    base16 = bc.shared_copy(base32).to(dtype) if dtype != torch.float32 else base32
    batch = multi30k_batch(base32.config.vocab_size, args.batch, args.seq, args.target, device)
    targets = bc.target_names(base32, bc.DEFAULT_TARGET_MODULES)
    modules = dict(base32.named_modules())
    budget = args.lora_rank * sum(modules[n].in_features + modules[n].out_features for n in targets)

    settings = {"old": (None, False), "new": (dtype if dtype != torch.float32 else None, True)}
    if dtype != torch.float32:
        settings["new32"] = (None, True)
    builders = {}
    for name, (autocast, target_only) in settings.items():
        base = base16 if name == "new" else base32
        built = {
            "neft": lambda b=base: bc.build_neft(b, "neft", targets, budget),
            "lora": lambda b=base: bc.build_lora(b, "lora", targets, budget),
            "full": lambda: bc.build_full(base32, "full"),  # float32 master weights in both settings
            "floor": lambda b=base: bc.build_floor(b, "floor"),
        }
        for method, build in built.items():
            builders[f"{method}_{name}"] = (build, autocast, target_only)
    methods = {n: build() for n, (build, _, _) in builders.items()}
    for method in methods.values():
        if method.floor:  # gradients flow back to the embedding output only, as in bench_common's floor
            method.model.get_input_embeddings().register_forward_hook(lambda m, i, out: out.detach().requires_grad_())
    fns = {n: functools.partial(step, methods[n], batch, autocast, target_only)
           for n, (_, autocast, target_only) in builders.items()}
    results = bc.interleaved_medians(fns, str(device), args.warmup, args.repeats)
    for name, method in methods.items():
        results[name]["trainable"] = method.trainable

    med = {n: r["median_s"] for n, r in results.items()}
    ratios = {
        "neft new/old": med["neft_new"] / med["neft_old"],
        "lora new/old": med["lora_new"] / med["lora_old"],
        "full new/old": med["full_new"] / med["full_old"],
        "neft/lora (new)": med["neft_new"] / med["lora_new"],
        "neft/floor (new)": med["neft_new"] / med["floor_new"],
        "neft/lora (old)": med["neft_old"] / med["lora_old"],
    }
    if "new32" in settings:
        ratios.update({f"{m} bf16/fp32 (new)": med[f"{m}_new"] / med[f"{m}_new32"] for m in ("neft", "lora", "full", "floor")})
        ratios["neft/lora (new32)"] = med["neft_new32"] / med["lora_new32"]
    print(f"\nSmolLM2-135M, {device}, new dtype {precision.name} ({bf16 if precision.name == 'bfloat16' else 'float32'}), "
          f"{args.attn_implementation} attention, batch {args.batch} x {args.seq} tokens "
          f"({args.target} labelled), {args.repeats} repeats after {args.warmup} warm-up, medians")
    print(bc.table(["method", "trainable", "step ms"], [[n, r["trainable"], r["median_s"] * 1e3] for n, r in results.items()]))
    print("\n" + bc.table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    out = args.out or bc.RESULTS_DIR / f"engine_{device.type}.json"
    bc.write_json(out, {"command": bc.command_line(), "machine": bc.machine(), "batch": args.batch, "seq": args.seq,
                        "target_tokens": args.target, "new_dtype": str(dtype), "bf16": bf16,
                        "attn_implementation": args.attn_implementation, "lora_rank": args.lora_rank,
                        "results": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
