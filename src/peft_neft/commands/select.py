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
    from ._selection_options import check_selection_arguments, select_and_save

    check_selection_arguments(args)
    from .._shapes import meta_model
    from ..selection import score_checkpoints

    scores = score_checkpoints(args.base, args.finetuned, target_modules=args.target_modules, progress=args.progress)
    select_and_save(args, scores, lambda: meta_model(args.base))
    return 0
