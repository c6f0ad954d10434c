"""The scorer registry: every way to score neurons on task data, what its calibration needs, and one call to run it.

``SCORERS`` is the one list the command line (``peft-neft calibrate --method``), ``compare`` and library code
draw from; a new score is one entry. Every scorer returns :class:`~peft_neft.selection.NeuronScores` with
LOWER = selected first: importance scores (movement, taylor, gradient, activation) are negated, so the most
important rows come first, as the most changed rows do under the paper's cosine.

This module imports no torch: the command line lists the scorers without loading it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

    from .neuron_scores import NeuronScores

Needs = Literal["optimizer", "gradients", "forward"]


@dataclass(frozen=True)
class Scorer:
    """One way to score neurons.

    Attributes:
        name: the registry key (``--method``).
        help: one line for ``--help`` and the docs.
        needs: what its calibration costs: ``"optimizer"`` (a short full fine-tune: weights, gradients and
            optimizer state), ``"gradients"`` (forward and backward passes, one module's weight gradient at a
            time) or ``"forward"`` (forward passes only).
        score: ``score(model, rows, *, collate_fn, steps, batch_size, lr, seed, target_modules, frugal=False,
            progress=False, checkpoint_dir=None, save_every=10) -> NeuronScores``; ``steps`` is the optimizer
            steps K or the batches K. Scorers that need no optimizer ignore ``lr``, ``frugal`` and ``progress``.
            The model is left as it was. Given a ``checkpoint_dir`` (a folder), the calibration saves its state
            there every ``save_every`` steps or batches, and a rerun with the same folder and settings resumes
            from it and gives the scores of an uninterrupted run (the optimizer scorers: Trainer's checkpoints;
            the others: their running per-row totals, :mod:`~peft_neft.selection.calibration_state`). None
            writes nothing.
    """

    name: str
    help: str
    needs: Needs
    score: Callable[..., NeuronScores]


def _after_fine_tune(method: str) -> Callable[..., NeuronScores]:
    def score(model: nn.Module, rows: Any, *, collate_fn: Callable, steps: int, batch_size: int, lr: float,
              seed: int, target_modules: Any, frugal: bool = False, progress: bool = False,
              checkpoint_dir: str | os.PathLike | None = None, save_every: int = 10) -> NeuronScores:
        from .calibration import calibrate

        return calibrate(model, rows, collate_fn=collate_fn, steps=steps, target_modules=target_modules, lr=lr,
                         batch_size=batch_size, seed=seed, frugal=frugal, progress=progress, method=method,
                         checkpoint_dir=checkpoint_dir, save_every=save_every)

    return score


def _from_batches(function: str) -> Callable[..., NeuronScores]:
    def score(model: nn.Module, rows: Any, *, collate_fn: Callable, steps: int, batch_size: int, lr: float,
              seed: int, target_modules: Any, frugal: bool = False, progress: bool = False,
              checkpoint_dir: str | os.PathLike | None = None, save_every: int = 10) -> NeuronScores:
        from . import batch_scores

        return getattr(batch_scores, function)(model, rows, collate_fn=collate_fn, batches=steps,
                                               target_modules=target_modules, batch_size=batch_size, seed=seed,
                                               checkpoint_dir=checkpoint_dir, save_every=save_every)

    return score


SCORERS: dict[str, Scorer] = {s.name: s for s in (
    Scorer("cosine", "short fine-tune of K steps, then the cosine of each row before and after (paper, Eq. 1)",
           "optimizer", _after_fine_tune("cosine")),
    Scorer("movement", "short fine-tune of K steps, then how far each row moved, ||W_K - W_0|| (movement pruning)",
           "optimizer", _after_fine_tune("movement")),
    Scorer("taylor", "first-order importance |sum_j w_ij g_ij| summed over K batches, no update (Molchanov 2019)",
           "gradients", _from_batches("taylor_scores")),
    Scorer("gradient", "the row gradient norm over K batches, no update", "gradients",
           _from_batches("gradient_scores")),
    Scorer("activation", "mean absolute output of the row's unit over K batches, forward passes only",
           "forward", _from_batches("activation_scores")),
)}


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name``; a ``ValueError`` lists the names there are."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"Unknown scorer {name!r}; choose one of {', '.join(SCORERS)}.") from None
