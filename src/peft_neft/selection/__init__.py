"""Neuron selection: scores (calibration included), budgets, and the choice of rows that makes a ``NeuronSelection``."""

from .neuron_selection import NeuronSelection, overlap
from .budget import budget_from_lora
from .calibration import calibrate, gradient_scores, pad_collate, tokenize_pair
from .calibration_callback import NeuronCalibrationCallback
from .cosine import score_checkpoints, score_models
from .neuron_scores import NeuronScores
from .select import select_hybrid, select_neurons

__all__ = [
    "NeuronCalibrationCallback",
    "NeuronScores",
    "NeuronSelection",
    "budget_from_lora",
    "calibrate",
    "gradient_scores",
    "overlap",
    "pad_collate",
    "score_checkpoints",
    "score_models",
    "select_hybrid",
    "select_neurons",
    "tokenize_pair",
]
