"""Options shared by ``peft-neft select`` and ``peft-neft calibrate`` (budget, strategy, output), and their use."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Callable

from .._targets import DEFAULT_TARGET_MODULES
from ._options import UsageError

if TYPE_CHECKING:  # torch and the selection code load when a command runs, not when the parser is built
    from torch import nn

    from ..neuron_selection import NeuronSelection
    from ..selection import NeuronScores


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Exactly one budget, the strategy, target modules and where to write the selection."""
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--percent", type=float, help="budget: x%% of ALL model parameters (the paper's NeFT_x%%)")
    budget.add_argument("--num-params", type=int, help="budget: this many trainable parameters")
    budget.add_argument("--num-neurons", type=int, help="budget: this many rows, whatever they cost")
    budget.add_argument("--lora-rank", type=int, help="budget: as many parameters as LoRA of this rank on every block Linear")
    parser.add_argument("--strategy", default="lowest",
                        help="lowest: most changed first (paper); reversed: least changed first; random (seeded)")
    parser.add_argument("--target-modules", nargs="+", default=list(DEFAULT_TARGET_MODULES),
                        help="Linear layers whose rows are scored")
    parser.add_argument("--per-layer-quota", action="store_true", help="give every layer its share of the budget")
    parser.add_argument("--seed", type=int, default=0, help="seed (random strategy, calibration data order)")
    parser.add_argument("--out", required=True, help="where to write the selection (.safetensors)")
    parser.add_argument("--plot", help="also write a PNG of the selection here")


def check_selection_arguments(args: argparse.Namespace) -> None:
    """Refuse an unknown strategy, an impossible budget or an output path that is a folder, before any scoring."""
    from ..selection.select import STRATEGIES

    if args.strategy not in STRATEGIES:
        raise UsageError(f"--strategy {args.strategy!r} is not a strategy; choose one of {', '.join(STRATEGIES)}.")
    if args.percent is not None and not 0 < args.percent <= 100:
        raise UsageError(f"--percent must be in (0, 100] (a share of all model parameters), got {args.percent}.")
    for flag in ("num_params", "num_neurons", "lora_rank"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {value}.")
    for flag, path, name in (("--out", args.out, "selection.safetensors"), ("--plot", args.plot, "selection.png")):
        if path and os.path.isdir(path):
            raise UsageError(f"{flag} {path!r} is a folder; give a file path, e.g. {os.path.join(path, name)!r}.")


def select_and_save(args: argparse.Namespace, scores: NeuronScores, structure: Callable[[], nn.Module]) -> NeuronSelection:
    """Apply the budget options to ``scores``, save (and plot) the selection, print its summary.

    ``structure`` returns the model (possibly on the meta device) that a ``--lora-rank`` budget is counted on.
    """
    from ..selection import budget_from_lora, select_neurons

    num_params = budget_from_lora(structure(), args.lora_rank) if args.lora_rank is not None else args.num_params
    selection = select_neurons(scores, percent=args.percent, num_params=num_params, num_neurons=args.num_neurons,
                               strategy=args.strategy, seed=args.seed, per_layer_quota=args.per_layer_quota)
    if args.lora_rank is not None:
        selection.metadata["budget"]["spec"] = {"lora_rank": args.lora_rank, "num_params": num_params}
    selection.save(args.out)
    print(selection.summary())
    print(f"selection written to {args.out}")
    if args.plot:
        selection.plot(args.plot)
        print(f"plot written to {args.plot}")
    return selection
