"""The fingerprint that ties scores, selections and adapters to one base model: a hash of its weight shapes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Optional

from torch import nn


def fingerprint_of(shapes: Iterable[tuple[str, Sequence[int]]]) -> str:
    """A short hash of the names and shapes of a model's 2-D weights."""
    digest = hashlib.sha256()
    for name, shape in sorted((n, tuple(int(d) for d in s)) for n, s in shapes if len(s) == 2):
        digest.update(f"{name}:{shape};".encode())
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a model in memory (tied weights counted once, as in its safetensors checkpoint).

    Under peft's wrappers it is the base model's: NeFT parameters and peft's copies of ``modules_to_save``
    are skipped, ``base_layer`` / ``original_module`` levels are dropped from names, and a bitsandbytes
    4-bit weight counts with its unpacked shape.
    """
    shapes = []
    for name, param in model.named_parameters():
        if "neft_" in name or ".modules_to_save." in name:
            continue
        name = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        shapes.append((name, getattr(getattr(param, "quant_state", None), "shape", None) or param.shape))
    return fingerprint_of(shapes)


def check_fingerprint(model: nn.Module, fingerprint: Optional[str], owner: str, fix: str) -> None:
    """Raise unless ``model`` has the weight shapes ``fingerprint`` records (None: nothing recorded)."""
    if fingerprint is not None and fingerprint != model_fingerprint(model):
        raise ValueError(
            f"{owner.capitalize()} comes from another base model: its weight shapes differ (fingerprint "
            f"{fingerprint} vs {model_fingerprint(model)}). {fix}"
        )
