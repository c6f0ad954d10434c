"""Options shared by ``peft-neft select`` and ``peft-neft calibrate`` (budget, strategy, output), and their use."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Optional

from .._targets import DEFAULT_TARGET_MODULES
from ._options import UsageError, number

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch and the selection code load when a command runs, not when the parser is built
    from torch import nn

    from ..selection import Budget
    from ..selection.neuron_selection import NeuronSelection


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Exactly one budget, the strategy, target modules and where to write the selection."""
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--percent", type=number(float),  # its range: Budget's own check, one line
                        help="budget: x%% of ALL model parameters (the paper's NeFT_x%%)")
    budget.add_argument("--num-params", type=number(int, at_least=1), help="budget: this many trainable parameters")
    budget.add_argument("--num-neurons", type=number(int, at_least=1),
                        help="budget: this many rows, whatever they cost")
    budget.add_argument("--lora-rank", type=number(int, at_least=1),
                        help="budget: as many parameters as LoRA of this rank on every block Linear")
    parser.add_argument("--strategy", default="lowest",
                        help="lowest: most changed first (paper); reversed: least changed first; random (seeded)")
    parser.add_argument("--target-modules", nargs="+", default=list(DEFAULT_TARGET_MODULES),
                        help="Linear layers whose rows are scored")
    parser.add_argument("--spread", choices=("global", "per-layer", "per-module"), default="global",
                        help="global: one ranking over all rows (paper); per-layer / per-module: every layer / "
                             "module gets a share of the budget in proportion to its size, rows ranked within it")
    parser.add_argument("--seed", type=number(int), default=0, help="seed (random strategy, calibration data order)")
    parser.add_argument("--out", required=True, help="where to write the selection (.safetensors)")
    parser.add_argument("--plot", help="also write a PNG of the selection here")


def check_selection_arguments(args: argparse.Namespace, inputs: dict[str, str]) -> None:
    """Refuse an unknown strategy, an impossible budget, or an output path that is a folder, is unwritable or
    would write over, into or around one of ``inputs`` (``path -> what it is``), before anything loads."""
    from ..outputs import check_output
    from ..selection.select import STRATEGIES

    if args.strategy not in STRATEGIES:
        raise UsageError(f"--strategy {args.strategy!r} is not a strategy; choose one of {', '.join(STRATEGIES)}.")
    if args.lora_rank is not None and args.lora_rank < 1:
        raise UsageError(f"--lora-rank must be at least 1, got {args.lora_rank}.")
    if args.lora_rank is None:
        try:
            budget_of(args)  # the budget's own checks, before anything loads
        except ValueError as err:
            raise UsageError(str(err)) from None
    for flag, path, name in (("--out", args.out, "selection.safetensors"), ("--plot", args.plot, "selection.png")):
        if path and os.path.isdir(path):
            raise UsageError(f"{flag} {path!r} is a folder; give a file path, e.g. {os.path.join(path, name)!r}.")
        if path:
            check_output(path, inputs, folder=False, option=flag)


def budget_of(args: argparse.Namespace, model: Optional[nn.Module] = None) -> Budget:
    """The one :class:`~peft_neft.selection.Budget` of the options; ``--lora-rank`` counts on ``model`` (meta is fine)."""
    from ..selection import Budget

    if args.lora_rank is not None:
        if model is None:
            raise ValueError("--lora-rank is counted on the model; load it first.")
        return Budget.from_lora(model, args.lora_rank)
    return Budget(percent=args.percent, num_params=args.num_params, num_neurons=args.num_neurons)


def save_selection(args: argparse.Namespace, selection: NeuronSelection) -> None:
    """Save (and plot) the selection where the options say, and print its summary."""
    meta = selection.metadata
    logger.debug("selected %s rows (%s parameters) of %d modules under the budget %s (%s %s), strategy %s",
                 meta.get("achieved_neurons"), meta.get("achieved_params"), len(selection.rows),
                 meta.get("budget", {}).get("spec"), meta.get("budget", {}).get("value"),
                 meta.get("budget", {}).get("unit"), meta.get("strategy"))
    selection.save(args.out)
    print(selection.summary())
    print(f"selection written to {args.out}")
    if args.plot:
        selection.plot(args.plot)
        print(f"plot written to {args.plot}")
