"""Neuron selection: scores (calibration included), budgets, and the choice of rows that makes a ``NeuronSelection``.

The names load on first use, so ``peft_neft.selection.scorers`` (the registry the command line reads) stays
cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .budget import Budget, budget_from_lora
    from .calibration import calibrate
    from .calibration_callback import NeuronCalibrationCallback
    from .cosine import score_checkpoints, score_models
    from .neuron_scores import NeuronScores
    from .neuron_selection import NeuronSelection, overlap
    from .probe_scores import activation_scores, gradient_scores, taylor_scores
    from .scorers import SCORERS, Scorer, get_scorer
    from .select import select_hybrid, select_neurons

_HOME = {
    **dict.fromkeys(["Budget", "budget_from_lora"], "budget"),
    "calibrate": "calibration",
    "NeuronCalibrationCallback": "calibration_callback",
    **dict.fromkeys(["score_checkpoints", "score_models"], "cosine"),
    "NeuronScores": "neuron_scores",
    **dict.fromkeys(["NeuronSelection", "overlap"], "neuron_selection"),
    **dict.fromkeys(["activation_scores", "gradient_scores", "taylor_scores"], "probe_scores"),
    **dict.fromkeys(["SCORERS", "Scorer", "get_scorer"], "scorers"),
    **dict.fromkeys(["select_hybrid", "select_neurons"], "select"),
}
__all__ = sorted(_HOME)


__getattr__, __dir__ = lazy_exports(__name__, _HOME, globals())
