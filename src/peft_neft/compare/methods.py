"""The methods a comparison trains, by name, and how each makes a base model trainable (paper section 5.1).

  ``base``                 no training (the zero-shot base model; evaluated once, for the first seed)
  ``full``                 every parameter
  ``embed``                the input embedding only (tied to the LM head in SmolLM2, so that too)
  ``in-out``               the MLP input and output projections, ``up_proj`` and ``down_proj``, fully
  ``lora:R``               peft LoRA of rank R on every Linear of the blocks (not the LM head)
  ``neft:P``               NeFT training P% of all parameters (``neft:1`` or ``neft:1%``)
  ``neft:match-lora:R``    NeFT with as many trainable parameters as ``lora:R``
  ``neft-random:...``, ``neft-reversed:...``   the ablations at a budget written as for ``neft``
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel

from .._targets import DEFAULT_TARGET_MODULES
from ..selection import Budget, NeuronSelection, select_neurons
from ..selection.cosine import score_models
from ..selection.neuron_scores import NeuronScores
from ..tuner import NeFTConfig

NEFT_STRATEGIES = {"neft": "lowest", "neft-random": "random", "neft-reversed": "reversed"}
# Per-method learning rates when nothing else is given: common defaults, not tuned here (use ``lr_grid``).
DEFAULT_LR = {"base": 0.0, "full": 5e-5, "embed": 1e-3, "in-out": 5e-5, "lora": 1e-3, "neft": 5e-4}
METHOD_HELP = "base, full, embed, in-out, lora:R, neft:P, neft:match-lora:R, neft-random:..., neft-reversed:..."


@dataclass(frozen=True)
class Method:
    """One parsed method name; ``spec`` is the canonical text used as its key in the results."""

    spec: str
    kind: str  # base | full | embed | in-out | lora | neft
    rank: int | None = None  # LoRA rank, or the LoRA rank a NeFT budget matches
    percent: float | None = None  # NeFT budget as % of all parameters
    strategy: str = "lowest"  # NeFT neuron selection strategy


def parse_method(text: str) -> Method:
    """Parse one method name such as ``lora:8``, ``neft:0.5%`` or ``neft-random:match-lora:8``."""
    spec = text.strip().lower()
    if spec in ("base", "full", "embed", "in-out"):
        return Method(spec, spec)
    head, _, arg = spec.partition(":")
    try:
        if head == "lora" and re.fullmatch(r"\d+", arg) and int(arg) > 0:
            return Method(spec, "lora", rank=int(arg))
        if head in NEFT_STRATEGIES:
            strategy = NEFT_STRATEGIES[head]
            match = re.fullmatch(r"match-lora:(\d+)", arg)
            if match and int(match.group(1)) > 0:
                return Method(spec, "neft", rank=int(match.group(1)), strategy=strategy)
            percent = float(arg.rstrip("%"))
            if 0 < percent <= 100:
                return Method(spec, "neft", percent=percent, strategy=strategy)
    except ValueError:
        pass
    raise ValueError(f"Unknown method {text!r}. Known methods: {METHOD_HELP}.")


def parse_methods(text: str | Sequence[str]) -> list[Method]:
    """Parse a comma-separated list (or a list) of method names; duplicates are an error."""
    items = [t for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ValueError(f"No methods given. Known methods: {METHOD_HELP}.")
    methods = [parse_method(t) for t in items]
    specs = [m.spec for m in methods]
    if len(set(specs)) != len(specs):
        raise ValueError(f"Method list {specs} names a method twice.")
    return methods


def paired_baseline(spec: str) -> str | None:
    """What a method is tested against: NeFT against the LoRA rank it matches, an ablation against NeFT."""
    method = parse_method(spec)
    if method.kind != "neft":
        return None
    if method.strategy != "lowest":
        return "neft:" + spec.partition(":")[2]
    return f"lora:{method.rank}" if method.rank else None


def prepare_model(model: PreTrainedModel, method: Method, seed: int, scores: Any = None,
                  selection: NeuronSelection | None = None, lora_target_modules: Sequence[str] = ()) -> torch.nn.Module:
    """Make ``model`` trainable the way ``method`` says (NeFT needs the calibration ``scores``, or its ``selection``).

    ``lora_target_modules``: what LoRA adapts and a match-lora budget counts (none: every decoder-block Linear).
    """
    if method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    if method.kind == "embed":
        model.get_input_embeddings().weight.requires_grad_(True)
    elif method.kind == "in-out":
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in DEFAULT_TARGET_MODULES:
                module.weight.requires_grad_(True)
    elif method.kind == "lora":
        config = LoraConfig(r=method.rank, lora_alpha=2 * method.rank, lora_dropout=0.0,
                            target_modules=list(lora_target_modules) or "all-linear")
        return get_peft_model(model, config)
    elif method.kind == "neft":
        selection = selection or select_for(model, method, scores, seed, lora_target_modules)
        return get_peft_model(model, NeFTConfig.from_selection(selection))
    return model


def select_for(model: PreTrainedModel, method: Method, scores: Any, seed: int,
               lora_target_modules: Sequence[str] = ()) -> NeuronSelection:
    """The NeFT neuron selection of ``method`` from calibration ``scores`` (match-lora: LoRA on ``lora_target_modules``,
    none given: every decoder-block Linear)."""
    if method.rank is not None:
        budget = Budget.from_lora(model, method.rank, list(lora_target_modules) or None)
    else:
        budget = Budget(percent=method.percent)
    return select_neurons(scores, budget=budget, strategy=method.strategy, seed=seed)


def shape_scores(model: PreTrainedModel, target_modules: Sequence[str]) -> NeuronScores:
    """Scores that carry only the target modules' shapes: all random rows need, so no calibration is run."""
    return replace(score_models(model, model, target_modules), method="none (random rows)")
