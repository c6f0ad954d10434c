"""``peft-neft calibrate``: a short full fine-tune (or the gradient score) on your data, then a neuron selection.

A thin shell: the fine-tune is a ``Trainer`` run with :class:`~peft_neft.selection.NeuronCalibrationCallback`,
the same callback you can add to your own training. Every argument is checked before any work.
"""

from __future__ import annotations

import argparse

from .compare import add_device_arguments, console_logs

NAME = "calibrate"
HELP = "Score neurons with a short fine-tune of K steps on your data (or gradient norms) and select a budget of them."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._selection_options import add_selection_arguments

    parser.add_argument("--model", default="default", help="transformers folder, or 'default' (embedded SmolLM2-135M)")
    parser.add_argument("--data", required=True,
                        help="JSON lines (.jsonl or .jsonl.gz) with 'prompt'/'completion' or 'source'/'target' text")
    parser.add_argument("--steps", type=int, default=800, help="fine-tuning steps K (gradient: batches)")
    parser.add_argument("--method", choices=["cosine", "gradient"], default="cosine",
                        help="cosine: short fine-tune then Eq. 1 (paper); gradient: gradient norms, no update")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate of the calibration fine-tune")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--max-length", type=int, default=256, help="truncate examples to this many tokens")
    parser.add_argument("--max-examples", type=int, help="use only the first N examples")
    parser.add_argument("--frugal", action="store_true", help="train only the target modules (less memory)")
    add_selection_arguments(parser)
    add_device_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible values before anything is loaded or trained."""
    positive = {"--steps": args.steps, "--batch-size": args.batch_size, "--max-length": args.max_length,
                "--max-examples": args.max_examples, "--num-params": args.num_params,
                "--num-neurons": args.num_neurons, "--lora-rank": args.lora_rank}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}" + (" (leave it out to use all examples)."
                                                                          if flag == "--max-examples" else "."))
    if args.percent is not None and not 0 < args.percent <= 100:
        raise ValueError(f"--percent must be in (0, 100], got {args.percent}.")
    if args.method == "cosine" and not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}: without an update no neuron changes.")


def _budget(args: argparse.Namespace, model) -> dict:
    from ..selection import budget_from_lora

    num_params = budget_from_lora(model, args.lora_rank) if args.lora_rank is not None else args.num_params
    return {"percent": args.percent, "num_params": num_params, "num_neurons": args.num_neurons,
            "strategy": args.strategy, "seed": args.seed, "per_layer_quota": args.per_layer_quota}


def _fine_tune_scores(args: argparse.Namespace, model, rows, collator, device, dtype):
    """Scores from ``--steps`` Trainer steps of a full (or --frugal) fine-tune, via the calibration callback."""
    import tempfile

    from transformers import TrainingArguments

    from .._targets import find_target_modules
    from ..selection import NeuronCalibrationCallback
    from ..training import TargetLossTrainer

    targets = {m.weight for m in find_target_modules(model, args.target_modules).values()}
    for p in model.parameters():
        p.requires_grad_(p in targets or not args.frugal)
    callback = NeuronCalibrationCallback(args.steps, budget=_budget(args, model), target_modules=args.target_modules,
                                         stop_training=True)
    with tempfile.TemporaryDirectory(prefix="peft-neft-calibrate-") as tmp:
        training = TrainingArguments(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=0.0, save_strategy="no",
            logging_strategy="no", report_to="none", bf16=str(dtype) == "torch.bfloat16",
            use_cpu=device.type == "cpu", seed=args.seed, data_seed=args.seed, remove_unused_columns=False,
        )
        TargetLossTrainer(model=model, args=training, train_dataset=rows, data_collator=collator,
                          callbacks=[callback], data_seed=args.seed).train()
    return callback.scores


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from ..selection import gradient_scores, tokenize_pair
    from ..compare import make_collator
    from ..device import resolve_device, resolve_dtype
    from ..models import load_model_and_tokenizer
    from ._selection_options import select_and_save
    from ..tasks import load_prompt_completion

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pairs = load_prompt_completion(args.data, args.max_examples)
    model, tokenizer = load_model_and_tokenizer(None if args.model == "default" else args.model)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    rows = [tokenize_pair(tokenizer, p, c, args.max_length) for p, c in zip(pairs["prompt"], pairs["completion"])]
    with console_logs():
        if args.method == "cosine":
            scores = _fine_tune_scores(args, model, rows, make_collator(tokenizer), device, dtype)
        else:
            scores = gradient_scores(model.to(device), rows, batches=args.steps, target_modules=args.target_modules,
                                     batch_size=args.batch_size, seed=args.seed, collate_fn=make_collator(tokenizer))
    scores.metadata.update(model=str(args.model), data=str(args.data), examples=len(rows))
    select_and_save(args, scores, lambda: model)
    return 0
