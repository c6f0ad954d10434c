"""Neuron selection: scores, budgets and the ``NeuronSelection`` container."""

from .neuron_selection import NeuronSelection, overlap
from .budget import budget_from_lora
from .scores import NeuronScores
from .scoring import score_checkpoints, score_models
from .select import select_hybrid, select_neurons

__all__ = [
    "NeuronScores",
    "NeuronSelection",
    "budget_from_lora",
    "overlap",
    "score_checkpoints",
    "score_models",
    "select_hybrid",
    "select_neurons",
]
