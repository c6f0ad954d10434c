"""Train a NeFT adapter with ``accelerate`` (one process, DDP, FSDP or DeepSpeed: the launcher decides).

    accelerate launch --config_file docs/examples/accelerate/ddp.yaml docs/examples/accelerate/train_neft.py \
        --model default --text-file train.txt --rows-per-module 32 --steps 200 --output-dir out/neft

``--model tiny`` builds a small random Llama from a config (no download), which is what the tests use.
``--batch-size`` is per process, so the global batch is ``batch_size * num_processes``; examples are
dealt to processes in order, so a run on P processes sees the same global batches as a one-process run
with ``--batch-size`` P times larger.

The adapter is saved once, from the main process, with ``accelerator.get_state_dict`` (which gathers
sharded FSDP / ZeRO-3 parameters on every rank first) and ``accelerator.unwrap_model(...).save_pretrained``.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import get_peft_model
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset
from transformers import LlamaConfig, LlamaForCausalLM

import peft_neft
from peft_neft.atomic import atomic_dir, atomic_path
from peft_neft.embedded_model import load_model_and_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default",
                        help="'tiny' (random tiny Llama), 'default' (embedded SmolLM2-135M) or a transformers folder")
    parser.add_argument("--neurons", help="a saved NeuronSelection file; otherwise --rows-per-module random rows")
    parser.add_argument("--rows-per-module", type=int, default=8, help="random rows per target module (no --neurons)")
    parser.add_argument("--target-modules", default="up_proj,down_proj,gate_proj",
                        help="comma-separated module-name suffixes for random selection")
    parser.add_argument("--text-file", help="training text, one example per line (.gz allowed); default: random tokens")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--num-examples", type=int, default=64, help="number of random examples (no --text-file)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2, help="per process")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--output-dir", required=True, help="where the adapter folder is written")
    parser.add_argument("--save-rank-states", action="store_true",
                        help="also write every process's adapter weights to OUTPUT_DIR/rank<i>.safetensors "
                             "(DDP: to check that the replicas agree)")
    return parser.parse_args(argv)


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def load_model(name: str, seed: int):
    """The base model and its tokenizer (``None`` for the tiny random model)."""
    if name == "tiny":
        return tiny_llama(seed), None
    return load_model_and_tokenizer(None if name == "default" else name)


def random_rows(model: torch.nn.Module, suffixes: list[str], k: int, seed: int) -> dict[str, list[int]]:
    """``k`` random output rows of every Linear whose name ends in one of ``suffixes`` (same on every rank)."""
    generator = torch.Generator().manual_seed(seed)
    rows = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith("." + s) for s in suffixes):
            if k > module.out_features:
                raise ValueError(f"--rows-per-module {k} exceeds {name}.out_features={module.out_features}.")
            rows[name] = torch.randperm(module.out_features, generator=generator)[:k].tolist()
    if not rows:
        raise ValueError(f"No Linear module ends in {suffixes}; pass --target-modules with names from the model.")
    return rows


def build_dataset(args: argparse.Namespace, tokenizer, vocab_size: int) -> TensorDataset:
    """Fixed-length token sequences: tokenized ``--text-file`` lines, or random tokens."""
    if args.text_file is None:
        generator = torch.Generator().manual_seed(args.seed + 1)
        return TensorDataset(torch.randint(0, vocab_size, (args.num_examples, args.seq_len), generator=generator))
    if tokenizer is None:
        raise ValueError("--text-file needs a model with a tokenizer (not --model tiny).")
    opener = gzip.open if str(args.text_file).endswith(".gz") else open
    with opener(args.text_file, "rt", encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    encoded = tokenizer(lines, max_length=args.seq_len, truncation=True, padding="max_length", return_tensors="pt")
    return TensorDataset(encoded["input_ids"], encoded["attention_mask"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    accelerator = Accelerator()
    set_seed(args.seed)
    base, tokenizer = load_model(args.model, args.seed)
    neurons = args.neurons or random_rows(base, args.target_modules.split(","), args.rows_per_module, args.seed)
    model = get_peft_model(base, peft_neft.NeFTConfig(neurons=neurons))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()

    dataset = build_dataset(args, tokenizer, base.config.vocab_size)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, drop_last=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.print(f"distributed_type={accelerator.distributed_type.value} processes={accelerator.num_processes} "
                      f"delta type={type(next(p for p in model.parameters() if p.requires_grad)).__name__}")

    step = 0
    while step < args.steps:
        for batch in loader:
            input_ids = batch[0]
            mask = batch[1] if len(batch) > 1 else torch.ones_like(input_ids)
            labels = input_ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            accelerator.print(f"step {step} loss {accelerator.reduce(loss.detach(), 'mean').item():.6f}")
            if step == args.steps:
                break

    save(accelerator, model, Path(args.output_dir), args.save_rank_states)
    accelerator.end_training()
    return 0


def save(accelerator: Accelerator, model: torch.nn.Module, output_dir: Path, rank_states: bool) -> None:
    """Save the adapter from the main process; optionally every rank's own copy of the deltas."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP / ZeRO-3: every rank calls it
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with atomic_dir(output_dir / "adapter") as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict)
    if rank_states:
        local = {name: p.detach().float().cpu().contiguous() for name, p in unwrapped.named_parameters()
                 if p.requires_grad}
        os.makedirs(output_dir, exist_ok=True)
        with atomic_path(output_dir / f"rank{accelerator.process_index}.safetensors") as tmp:
            save_file(local, str(tmp))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    raise SystemExit(main())
