"""``peft-neft select``: NeFT neurons from two checkpoints on disk (original and fine-tuned), streamed."""

from __future__ import annotations

import argparse

NAME = "select"
HELP = "Select the neurons that changed most between a base and a fine-tuned checkpoint (cosine, paper Eq. 1)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._selection_options import add_selection_arguments

    parser.add_argument("--base", required=True, help="the original model: a transformers folder with safetensors")
    parser.add_argument("--finetuned", required=True, help="the fine-tuned model: a transformers folder with safetensors")
    add_selection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ._selection_options import budget_of, check_selection_arguments, save_selection

    check_selection_arguments(args, {args.base: "base model (--base)",
                                     args.finetuned: "fine-tuned model (--finetuned)"})  # before anything loads
    from .._shapes import meta_model
    from ..selection import score_checkpoints, select_neurons

    budget = budget_of(args, meta_model(args.base) if args.lora_rank is not None else None)
    scores = score_checkpoints(args.base, args.finetuned, target_modules=args.target_modules, progress=args.progress)
    save_selection(args, select_neurons(scores, budget=budget, strategy=args.strategy, seed=args.seed,
                                        spread=args.spread))
    return 0
