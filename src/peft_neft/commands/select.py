"""``peft-neft select``: NeFT neurons from two checkpoints on disk (original and fine-tuned, streamed), or from the
scores of a calibration a comparison kept."""

from __future__ import annotations

import argparse
import os

from ._options import UsageError

NAME = "select"
HELP = ("Select the neurons that changed most between a base and a fine-tuned checkpoint (cosine, paper Eq. 1), or "
        "by a calibration a comparison kept.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._selection_options import add_selection_arguments

    parser.add_argument("--base", help="the original model: a transformers folder with safetensors")
    parser.add_argument("--finetuned", help="the fine-tuned model: a transformers folder with safetensors")
    parser.add_argument("--scores", metavar="FILE",
                        help="instead of --base/--finetuned: a calibration a comparison kept "
                             "(OUT/calibrations/*.safetensors), any scorer; its own modules are the targets")
    parser.add_argument("--model", default="default",
                        help="with --scores and --lora-rank: the model the budget is counted on, a transformers folder "
                             "or 'default' (embedded SmolLM2-135M)")
    add_selection_arguments(parser)


def _inputs(args: argparse.Namespace) -> dict[str, str]:
    """The files read, ``path -> what it is``: the kept scores, or the two checkpoints."""
    if args.scores and (args.base or args.finetuned):
        raise UsageError("select reads --scores or --base/--finetuned, not both; give one.")
    if args.scores:
        if not os.path.isfile(args.scores):
            raise UsageError(f"--scores {args.scores!r} does not exist; give a calibration a comparison kept "
                             f"(OUT/calibrations/*.safetensors).")
        return {args.scores: "calibration (--scores)"}
    if not (args.base and args.finetuned):
        raise UsageError("give --scores FILE, or --base and --finetuned (the two checkpoints to compare).")
    return {args.base: "base model (--base)", args.finetuned: "fine-tuned model (--finetuned)"}


def run(args: argparse.Namespace) -> int:
    from ._selection_options import budget_of, check_selection_arguments, save_selection

    check_selection_arguments(args, _inputs(args))  # before anything loads
    from .._shapes import meta_model
    from ..selection import score_checkpoints, select_neurons

    if args.scores:
        from ..selection.neuron_scores import load_scores
        from ..embedded_model import resolve_model_path

        try:
            scores, _ = load_scores(args.scores)
        except ValueError as err:
            raise UsageError(f"--scores: {err}") from None
        counted_on = resolve_model_path(args.model)
    else:
        scores, counted_on = None, args.base
    budget = budget_of(args, meta_model(counted_on) if args.lora_rank is not None else None)
    if scores is None:
        scores = score_checkpoints(args.base, args.finetuned, target_modules=args.target_modules, progress=args.progress)
    save_selection(args, select_neurons(scores, budget=budget, strategy=args.strategy, seed=args.seed,
                                        spread=args.spread))
    return 0
