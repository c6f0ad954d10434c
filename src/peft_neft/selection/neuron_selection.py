"""``NeuronSelection``: which output neurons of which modules NeFT trains, with their provenance."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path

_ROWS = "rows/"
_SCORES = "scores/"
_FORMAT = "peft-neft-selection/1"


@dataclass
class NeuronSelection:
    """Selected rows per module (sorted unique int64), optional per-neuron scores and metadata.

    ``metadata`` is JSON-serializable: the scoring method, the budget, a fingerprint of the base
    model's shapes and whatever else produced the selection.
    """

    rows: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_neurons(self) -> int:
        return sum(int(r.numel()) for r in self.rows.values())

    def save(self, path: str | os.PathLike) -> None:
        """Write the selection to one safetensors file (no pickle), atomically."""
        tensors = {_ROWS + name: rows.to(torch.int64).contiguous().cpu() for name, rows in self.rows.items()}
        tensors.update({_SCORES + name: s.float().contiguous().cpu() for name, s in self.scores.items()})
        header = {"format": _FORMAT, "metadata": json.dumps(self.metadata, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronSelection":
        """Read a selection written by :meth:`save`."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No neuron selection file at {os.fspath(path)!r}.")
        try:
            tensors = load_file(os.fspath(path))
            from safetensors import safe_open

            with safe_open(os.fspath(path), framework="pt") as handle:
                header = handle.metadata() or {}
        except SafetensorError as err:
            raise ValueError(f"{os.fspath(path)!r} is not a readable neuron selection file: {err}") from err
        if header.get("format") != _FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a peft-neft neuron selection (format {header.get('format')!r}).")
        rows = {k[len(_ROWS):]: v for k, v in tensors.items() if k.startswith(_ROWS)}
        scores = {k[len(_SCORES):]: v for k, v in tensors.items() if k.startswith(_SCORES)}
        return cls(rows=rows, scores=scores, metadata=json.loads(header.get("metadata", "{}")))
