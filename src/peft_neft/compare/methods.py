"""The methods a comparison trains, by name, and how each makes a base model trainable (paper section 5.1).

  ``base``                 no training (the zero-shot base model; evaluated once, for the first seed)
  ``full``                 every parameter
  ``embed``                the input embedding only (tied to the LM head in SmolLM2, so that too)
  ``in-out``               the MLP input and output projections, ``up_proj`` and ``down_proj``, fully
  ``lora:R``               peft LoRA of rank R on every Linear of the blocks (not the LM head)
  ``neft:P``               NeFT training P% of all parameters (``neft:1`` or ``neft:1%``)
  ``neft:match-lora:R``    NeFT with as many trainable parameters as ``lora:R``
  ``neft-random:...``, ``neft-reversed:...``   the ablations at a budget written as for ``neft``

A NeFT method may name its variant in brackets, ``neft[score=gradient,spread=module,targets=all-linear]:match-lora:8``:

  ``score``    the scorer that ranks the rows (:data:`~peft_neft.selection.scorers.SCORERS`; default ``cosine``,
               the paper's); random rows take none
  ``spread``   ``global`` (one ranking, the paper's), ``per-layer``/``layer`` or ``per-module``/``module`` (each
               decoder block, or each target module, gets a share of the budget in proportion to its size)
  ``targets``  the modules whose rows are scored and trained: ``all-linear`` (LoRA's modules) or names joined by
               ``+`` (``q_proj+v_proj``); default: the comparison's ``neft_target_modules``

The canonical text (defaults left out, keys in this order, long spread names) is the method's key in the results,
so ``neft:match-lora:8`` is the paper's selection as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel

from .._targets import DEFAULT_TARGET_MODULES, TargetModules
from ..selection import Budget, NeuronSelection, select_neurons
from ..selection.cosine import score_models
from ..errors import UsageError
from ..selection.neuron_scores import NeuronScores
from ..selection.scorers import SCORERS
from ..selection.select import SPREADS as SPREAD_NAMES
from ..tuner import NeFTConfig

NEFT_STRATEGIES = {"neft": "lowest", "neft-random": "random", "neft-reversed": "reversed"}
# Per-method learning rates when nothing else is given: common defaults, not tuned here (use ``lr_grid``).
DEFAULT_LR = {"base": 0.0, "full": 5e-5, "embed": 1e-3, "in-out": 5e-5, "lora": 1e-3, "neft": 5e-4}
METHOD_HELP = ("base, full, embed, in-out, lora:R, neft:P, neft:match-lora:R, neft-random:..., neft-reversed:..., "
               "neft[score=S,spread=G,targets=T]:...")
# The spreads of a NeFT budget, each with its short name.
SPREADS = {spread: spread.removeprefix("per-") for spread in SPREAD_NAMES}
OPTIONS = ("score", "spread", "targets")
ALL_LINEAR = "all-linear"
# peft's regex for every Linear inside a numbered decoder block (what LoRA's all-linear adapts there).
_BLOCK_LINEARS = r"(.*\.)?\d+\..*"


@dataclass(frozen=True)
class Method:
    """One parsed method name; ``spec`` is the canonical text used as its key in the results."""

    spec: str
    kind: str  # base | full | embed | in-out | lora | neft
    rank: int | None = None  # LoRA rank, or the LoRA rank a NeFT budget matches
    percent: float | None = None  # NeFT budget as % of all parameters
    strategy: str = "lowest"  # NeFT neuron selection strategy
    score: str = "cosine"  # NeFT: the scorer that ranks the rows
    spread: str = "global"  # NeFT: global, per-layer or per-module
    targets: str | None = None  # NeFT: "all-linear", names joined by "+", or None (the comparison's targets)


def parse_method(text: str) -> Method:
    """Parse one method name such as ``lora:8``, ``neft:0.5%``, ``neft-random:match-lora:8`` or
    ``neft[score=gradient,spread=module]:match-lora:8``; a bad one is a :class:`~peft_neft.errors.UsageError`."""
    spec = text.strip().lower()
    if spec in ("base", "full", "embed", "in-out"):
        return Method(spec, spec)
    match = re.fullmatch(r"([a-z-]+)\[([^\[\]]*)\]:(.*)", spec)
    if match:
        head, options, arg = match.groups()
    else:
        (head, _, arg), options = spec.partition(":"), ""
    if match and head not in NEFT_STRATEGIES:
        raise UsageError(f"Only NeFT methods take options in brackets ({', '.join(NEFT_STRATEGIES)}), not {text!r}.")
    try:
        if head == "lora" and re.fullmatch(r"\d+", arg) and int(arg) > 0:
            return Method(spec, "lora", rank=int(arg))
        if head in NEFT_STRATEGIES:
            strategy = NEFT_STRATEGIES[head]
            variant = _variant(options, strategy, text)
            budget = re.fullmatch(r"match-lora:(\d+)", arg)
            if budget and int(budget.group(1)) > 0:
                return Method(_spec(head, variant, arg), "neft", rank=int(budget.group(1)), strategy=strategy, **variant)
            percent = float(arg.rstrip("%"))
            if 0 < percent <= 100:
                return Method(_spec(head, variant, arg), "neft", percent=percent, strategy=strategy, **variant)
    except ValueError as err:
        if isinstance(err, UsageError):
            raise
    raise UsageError(f"Unknown method {text!r}. Known methods: {METHOD_HELP}.")


def _variant(options: str, strategy: str, text: str) -> dict[str, str]:
    """The non-default ``score``/``spread``/``targets`` of a NeFT method's bracket text, checked and canonical."""
    variant: dict[str, str] = {}
    for item in (o.strip() for o in options.split(",") if o.strip()):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals:
            raise UsageError(f"{text!r}: write each option as key=value ({', '.join(OPTIONS)}), not {item!r}.")
        if key not in OPTIONS:
            raise UsageError(f"{text!r}: Unknown option {key!r}; the options are {', '.join(OPTIONS)}.")
        if key in variant:
            raise UsageError(f"{text!r} gives {key} twice; give it once.")
        variant[key] = _option(key, value, text)
    if strategy == "random" and "score" in variant:
        raise UsageError(f"{text!r}: random rows are drawn by the seed, so they take no score; leave score= out.")
    defaults = {"score": "cosine", "spread": "global"}
    return {k: v for k, v in variant.items() if defaults.get(k) != v}


def _option(key: str, value: str, text: str) -> str:
    """One option's canonical value (long spread names, targets as given)."""
    if key == "score":
        if value not in SCORERS:
            raise UsageError(f"{text!r}: Unknown score {value!r}; the scores are {', '.join(SCORERS)}.")
        return value
    if key == "spread":
        spread = next((long for long, short in SPREADS.items() if value in (long, short)), None)
        if spread is None:
            known = ", ".join(long if long == short else f"{long} ({short})" for long, short in SPREADS.items())
            raise UsageError(f"{text!r}: Unknown spread {value!r}; the spreads are {known}.")
        return spread
    if value != ALL_LINEAR and not re.fullmatch(r"[a-z0-9_.]+(\+[a-z0-9_.]+)*", value):
        raise UsageError(f"{text!r}: targets must be {ALL_LINEAR} (LoRA's modules) or module names joined by + "
                         f"(q_proj+v_proj), not {value!r}.")
    return value


def _spec(head: str, variant: dict[str, str], arg: str) -> str:
    """A NeFT method's canonical text: its options in a fixed order, ``neft:...`` with none."""
    options = ",".join(f"{k}={variant[k]}" for k in OPTIONS if k in variant)
    return f"{head}[{options}]:{arg}" if options else f"{head}:{arg}"


def split_methods(text: str) -> list[str]:
    """A comma-separated method list split at the commas outside brackets."""
    return re.split(r",(?![^\[\]]*\])", text)


def parse_methods(text: str | Sequence[str]) -> list[Method]:
    """Parse a comma-separated list (or a list) of method names; duplicates are an error."""
    items = [t for t in (split_methods(text) if isinstance(text, str) else text) if t.strip()]
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
    """The NeFT neuron selection of ``method`` from calibration ``scores``, spread as the method says (match-lora:
    LoRA on ``lora_target_modules``, none given: every decoder-block Linear)."""
    if method.rank is not None:
        budget = Budget.from_lora(model, method.rank, list(lora_target_modules) or None)
    else:
        budget = Budget(percent=method.percent)
    return select_neurons(scores, budget=budget, strategy=method.strategy, seed=seed, spread=method.spread)


def neft_targets(method: Method, config: Any) -> TargetModules:
    """The modules whose rows a NeFT ``method`` scores and trains in a comparison of ``config``: its ``targets``,
    or the comparison's ``neft_target_modules``; ``all-linear``: LoRA's modules (none set: every block Linear)."""
    if method.targets is None:
        return tuple(config.neft_target_modules)
    if method.targets == ALL_LINEAR:
        return tuple(config.lora_target_modules) or _BLOCK_LINEARS
    return tuple(method.targets.split("+"))


def calibration_key(method: Method, seed: int) -> str | None:
    """The name of the calibration a method's run needs (None: none), shared by every variant that needs the same:
    ``calibration@seed0`` for the paper's cosine on the comparison's targets (the name older folders cached it
    under), ``calibration[score=gradient,targets=all-linear]@seed0`` otherwise. The spread only selects."""
    if method.kind != "neft" or method.strategy == "random":
        return None
    options = ",".join(f"{k}={v}" for k, v in (("score", method.score), ("targets", method.targets))
                       if v not in ("cosine", None))
    return f"calibration{f'[{options}]' if options else ''}@seed{seed}"


def shape_scores(model: PreTrainedModel, target_modules: TargetModules) -> NeuronScores:
    """Scores that carry only the target modules' shapes: all random rows need, so no calibration is run."""
    return replace(score_models(model, model, target_modules), method="none (random rows)")
