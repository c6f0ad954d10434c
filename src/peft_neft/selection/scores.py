"""``NeuronScores``: one score per output neuron of each target module, plus what a budget needs.

Also the helpers every scorer shares: finding the target modules of a model and the fingerprint
of a base model's shapes (so scores, selections and models from different bases are never mixed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

TargetModules = Union[str, Sequence[str]]
DEFAULT_TARGETS: tuple[str, ...] = ("up_proj", "down_proj")


@dataclass
class NeuronScores:
    """Per-neuron scores of one model's target modules.

    Attributes:
        scores: module name -> 1-D tensor (out_features,). LOWER means "select first" for every
            method: the cosine similarity between original and fine-tuned row for ``"cosine"``
            (float64: after a few steps ``1 - cos`` is ~1e-9, below float32's resolution near 1),
            the negative accumulated gradient norm for ``"gradient"``.
        in_features: module name -> parameters one row of that module costs.
        total_params: all parameters of the base model (the denominator of percent budgets).
        method: how the scores were made (``"cosine"``, ``"gradient"``, ...).
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
        modules = dict(model.named_modules())
        for name, s in self.scores.items():
            if name not in modules:
                raise ValueError(
                    f"The scores name module {name!r}, which the model does not have: "
                    "were they computed on another model?"
                )
            out_f, in_f = module_shape(modules[name])
            if (out_f, in_f) != (s.numel(), self.in_features[name]):
                raise ValueError(
                    f"Scores of module {name!r} are for shape (out={s.numel()}, in={self.in_features[name]}) but the "
                    f"model's module has (out={out_f}, in={in_f}): the scores come from another base model."
                )
        if self.fingerprint is not None and self.fingerprint != model_fingerprint(model):
            raise ValueError(
                "The scores were computed on a base model with other parameter shapes (fingerprint "
                f"{self.fingerprint} vs {model_fingerprint(model)}). Score the model you will train."
            )


def module_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or Conv1D: a "row" is one output neuron."""
    if isinstance(module, Conv1D):
        in_f, out_f = module.weight.shape
        return int(out_f), int(in_f)
    if isinstance(module, nn.Linear):
        return int(module.out_features), int(module.in_features)
    raise TypeError(f"Only nn.Linear and Conv1D have neuron rows, got {type(module).__name__}.")


def weight_rows(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features); a transposed view for Conv1D."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def matches(target_modules: TargetModules, name: str) -> bool:
    """peft's rule: a regex string must match the full name, a list entry the name or its last parts."""
    from ..tuner.config import _target_matches  # late: the tuner package imports this one

    return _target_matches(target_modules, name)


def find_target_modules(model: nn.Module, target_modules: TargetModules) -> dict[str, nn.Module]:
    """Linear/Conv1D modules matching ``target_modules`` (peft's rule), with a clear error for unknown names."""
    found = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, Conv1D)) and name and matches(target_modules, name)
    }
    check_targets_found(target_modules, found, linear_suffixes(model.named_modules()))
    return found


def linear_suffixes(named_modules: Iterable[tuple[str, nn.Module]]) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in named_modules if isinstance(m, (nn.Linear, Conv1D)) and n})


def check_targets_found(target_modules: TargetModules, found: Iterable[str], available: list[str]) -> None:
    """Every list entry must match at least one module; a regex must match some module."""
    found = list(found)
    entries = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not entries:
        raise ValueError("target_modules is empty; name at least one module, e.g. ['up_proj', 'down_proj'].")
    if isinstance(target_modules, str):
        unknown = [] if found else entries
    else:
        unknown = [t for t in entries if not any(n == t or n.endswith("." + t) for n in found)]
    if unknown:
        raise ValueError(
            f"Unknown target modules {unknown}: no Linear/Conv1D module of the model matches. "
            f"The model's Linear layers are named {available}."
        )


def fingerprint_of(shapes: Iterable[tuple[str, Sequence[int]]]) -> str:
    """A short hash of the names and shapes of a model's 2-D weights."""
    digest = hashlib.sha256()
    for name, shape in sorted((n, tuple(int(d) for d in s)) for n, s in shapes if len(s) == 2):
        digest.update(f"{name}:{shape};".encode())
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a model in memory (tied weights counted once, as in its safetensors checkpoint)."""
    return fingerprint_of((n, p.shape) for n, p in model.named_parameters())


def count_params(model: nn.Module) -> int:
    """All parameters of the model, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())
