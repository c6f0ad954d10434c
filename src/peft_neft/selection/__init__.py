"""Neuron selection: scores (calibration included), budgets, and the choice of rows that makes a ``NeuronSelection``."""

from .neuron_selection import NeuronSelection, overlap
from .budget import Budget, budget_from_lora
from .calibration import calibrate, gradient_scores
from .calibration_callback import NeuronCalibrationCallback
from .cosine import score_checkpoints, score_models
from .neuron_scores import NeuronScores
from .select import select_hybrid, select_neurons

__all__ = [
    "Budget",
    "NeuronCalibrationCallback",
    "NeuronScores",
    "NeuronSelection",
    "budget_from_lora",
    "calibrate",
    "gradient_scores",
    "overlap",
    "score_checkpoints",
    "score_models",
    "select_hybrid",
    "select_neurons",
]
