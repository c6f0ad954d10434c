"""Shapes of a model's row modules (the fingerprint of a base model lives in :mod:`peft_neft.tuner.fingerprint`).

Also builds a model's module tree on the meta device (no weights) from its ``config.json``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D


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


def count_params(model: nn.Module) -> int:
    """All parameters of the model, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())


def module_shapes(model: nn.Module, names: Iterable[str], owner: str) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of each named module; a clear error for one the model does not have.

    ``owner`` names what lists the modules in the error (``"the selection"``, ``"the scores"``).
    """
    modules = dict(model.named_modules())
    shapes = {}
    for name in names:
        if name not in modules:
            raise ValueError(
                f"Module {name!r} in {owner} is not a module of this model: was it made for another model?"
            )
        shapes[name] = module_shape(modules[name])
    return shapes


def meta_model(model_dir: str | os.PathLike) -> nn.Module:
    """The model of a transformers folder built on the meta device from its ``config.json`` (no weights).

    A causal LM when transformers knows one for the config, else the bare model (whose checkpoints use
    the bare model's module names).
    """
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{os.fspath(os.path.join(model_dir, 'config.json'))!r} is not a readable model config ({err}). "
            "Save the model again with save_pretrained()."
        ) from err
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:
            return AutoModel.from_config(config)
