"""``peft-neft select``: NeFT neurons from two checkpoints on disk (original and fine-tuned), streamed."""

from __future__ import annotations

import argparse

NAME = "select"
HELP = "Select the neurons that changed most between a base and a fine-tuned checkpoint (cosine, paper Eq. 1)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..selection.cli_args import add_selection_arguments

    parser.add_argument("--base", required=True, help="the original model: a transformers folder with safetensors")
    parser.add_argument("--finetuned", required=True, help="the fine-tuned model: a transformers folder with safetensors")
    add_selection_arguments(parser)


def _meta_model(path: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))


def run(args: argparse.Namespace) -> int:
    from ..selection import score_checkpoints
    from ..selection.cli_args import select_and_save

    scores = score_checkpoints(args.base, args.finetuned, target_modules=args.target_modules, progress=args.progress)
    select_and_save(args, scores, lambda: _meta_model(args.base))
    return 0
