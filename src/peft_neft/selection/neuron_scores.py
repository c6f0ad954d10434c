"""``NeuronScores``: one score per output neuron of each target module, plus what a budget needs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .._shapes import module_shapes
from ..atomic import atomic_path
from ..tuner.fingerprint import check_fingerprint


@dataclass
class NeuronScores:
    """Per-neuron scores of one model's target modules.

    Attributes:
        scores: module name -> 1-D tensor (out_features,). LOWER means "select first" for every
            method: the cosine similarity between original and fine-tuned row for ``"cosine"``
            (float64: after a few steps ``1 - cos`` is ~1e-9, below float32's resolution near 1), the negated
            importance for the others (``"movement"``, ``"taylor"``, ``"gradient"``, ``"activation"``; see
            :mod:`peft_neft.selection.scorers`).
        in_features: module name -> parameters one row of that module costs.
        total_params: all parameters of the base model (the denominator of percent budgets).
        method: how the scores were made (a scorer's name: ``"cosine"``, ``"taylor"``, ...).
        metadata: JSON-serializable provenance; ``"fingerprint"`` identifies the base model's shapes.
    """

    scores: dict[str, torch.Tensor]
    in_features: dict[str, int]
    total_params: int
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.scores:
            raise ValueError("NeuronScores needs at least one scored module.")
        missing = sorted(set(self.scores) - set(self.in_features))
        if missing:
            raise ValueError(f"NeuronScores: in_features is missing for modules {missing[:5]}.")
        for name, s in self.scores.items():
            if s.ndim != 1 or s.numel() == 0:
                raise ValueError(f"Scores of module {name!r} must be a non-empty 1-D tensor, got shape {tuple(s.shape)}.")
            if torch.isnan(s).any():
                raise ValueError(f"Scores of module {name!r} contain NaN; recompute them.")

    @property
    def out_features(self) -> dict[str, int]:
        return {name: int(s.numel()) for name, s in self.scores.items()}

    @property
    def fingerprint(self) -> str | None:
        return self.metadata.get("fingerprint")

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error unless ``model`` has the shapes these scores were computed on."""
        for name, shape in module_shapes(model, self.scores, "the scores").items():
            expected = (self.scores[name].numel(), self.in_features[name])
            if shape != expected:
                raise ValueError(
                    f"Scores of module {name!r} are for shape (out={expected[0]}, in={expected[1]}) but the "
                    f"model's module has (out={shape[0]}, in={shape[1]}): the scores come from another base model."
                )
        check_fingerprint(model, self.fingerprint, "the scores", "Score the model you will train.")


def save_scores(path: str | os.PathLike, scores: NeuronScores, info: dict[str, Any]) -> None:
    """Store a calibration's scores and what it ran with (``info``) at ``path`` (.safetensors), atomically: the
    file ``compare`` keeps in ``OUT/calibrations/`` and ``peft-neft select --scores`` reads."""
    meta = {"in_features": scores.in_features, "total_params": scores.total_params, "method": scores.method,
            "metadata": scores.metadata, "info": info}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in scores.scores.items()}, str(tmp), metadata={"calibration": json.dumps(meta)})


def load_scores(path: str | os.PathLike) -> tuple[NeuronScores, dict[str, Any]]:
    """The scores and ``info`` :func:`save_scores` wrote."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["calibration"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as err:  # a damaged cache: name it and the fix
        raise ValueError(f"{os.fspath(path)} is not a readable calibration file ({err}); delete it to calibrate "
                         "again.") from None
    scores = NeuronScores(tensors, meta["in_features"], meta["total_params"], meta["method"], meta["metadata"])
    return scores, meta["info"]
