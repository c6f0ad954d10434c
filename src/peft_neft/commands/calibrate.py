"""``peft-neft calibrate``: a short full fine-tune (or the gradient score) on your data, then a neuron selection.

A thin shell: the fine-tune is a ``Trainer`` run with :class:`~peft_neft.selection.NeuronCalibrationCallback`,
the same callback you can add to your own training. Every argument is checked before any work.
"""

from __future__ import annotations

import argparse

from ._options import UsageError, add_config_argument, add_device_arguments, check_device
from ._selection_options import check_selection_arguments

NAME = "calibrate"
HELP = "Score neurons with a short fine-tune of K steps on your data (or gradient norms) and select a budget of them."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._selection_options import add_selection_arguments

    add_config_argument(parser)
    parser.add_argument("--model", default="default", help="transformers folder, or 'default' (embedded SmolLM2-135M)")
    parser.add_argument("--data", required=True,
                        help="JSON lines (.jsonl or .jsonl.gz) with 'prompt'/'completion' or 'source'/'target' text")
    parser.add_argument("--steps", "--max-steps", type=int, default=800, help="fine-tuning steps K (gradient: batches)")
    parser.add_argument("--method", choices=["cosine", "gradient"], default="cosine",
                        help="cosine: short fine-tune then Eq. 1 (paper); gradient: gradient norms, no update")
    parser.add_argument("--lr", "--learning-rate", type=float, default=1e-5, help="learning rate of the calibration fine-tune")
    parser.add_argument("--batch-size", "--per-device-train-batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--max-length", type=int, default=256, help="truncate examples to this many tokens")
    parser.add_argument("--max-examples", type=int, help="use only the first N examples")
    parser.add_argument("--frugal", action="store_true", help="train only the target modules (less memory)")
    add_selection_arguments(parser)
    add_device_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible values before anything is loaded or trained."""
    check_selection_arguments(args)
    positive = {"--steps": args.steps, "--batch-size": args.batch_size, "--max-length": args.max_length,
                "--max-examples": args.max_examples}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}" + (" (leave it out to use all examples)."
                                                                          if flag == "--max-examples" else "."))
    if args.method == "cosine" and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}: without an update no neuron changes.")
    check_device(args.device, args.dtype)


def _budget(args: argparse.Namespace, model) -> dict:
    from ..selection import budget_from_lora

    num_params = budget_from_lora(model, args.lora_rank) if args.lora_rank is not None else args.num_params
    return {"percent": args.percent, "num_params": num_params, "num_neurons": args.num_neurons,
            "strategy": args.strategy, "seed": args.seed, "per_layer_quota": args.per_layer_quota}


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from ..compare import make_collator
    from ..device import autocast_for, resolve_device, resolve_dtype
    from ..embedded_model import load_model_and_tokenizer
    from ..selection import calibrate, gradient_scores, tokenize_pair
    from ..tasks import load_prompt_completion
    from ._selection_options import select_and_save

    pairs = load_prompt_completion(args.data, args.max_examples)
    model, tokenizer = load_model_and_tokenizer(None if args.model == "default" else args.model)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    rows = [tokenize_pair(tokenizer, p, c, args.max_length) for p, c in zip(pairs["prompt"], pairs["completion"])]
    if args.method == "cosine":
        with autocast_for(device, dtype):  # float32 weights, their products in the compute dtype
            scores = calibrate(model.to(device), rows, steps=args.steps, target_modules=args.target_modules,
                               lr=args.lr, batch_size=args.batch_size, seed=args.seed, frugal=args.frugal,
                               collate_fn=make_collator(tokenizer), budget=_budget(args, model),
                               progress=args.progress)
    else:
        scores = gradient_scores(model.to(device), rows, batches=args.steps, target_modules=args.target_modules,
                                 batch_size=args.batch_size, seed=args.seed, collate_fn=make_collator(tokenizer))
    scores.metadata.update(model=str(args.model), data=str(args.data), examples=len(rows))
    select_and_save(args, scores, lambda: model)
    return 0
