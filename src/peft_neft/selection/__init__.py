"""Neuron selection: scores, budgets, and the choice of rows that makes a ``NeuronSelection``."""

from ..neuron_selection import NeuronSelection, overlap
from .budget import budget_from_lora
from .cosine import score_checkpoints, score_models
from .neuron_scores import NeuronScores
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
