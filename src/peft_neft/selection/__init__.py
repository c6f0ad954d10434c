"""Neuron selection: scores, budgets and the ``NeuronSelection`` container."""

from .neuron_selection import NeuronSelection

__all__ = ["NeuronSelection"]
