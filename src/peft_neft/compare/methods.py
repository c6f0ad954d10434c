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
  ``calibration``  a calibration computed elsewhere, by the name the comparison's ``stored_calibrations``
               (``--stored-calibration NAME=FILE``) gives its file: the rows are chosen from its scores, at this
               method's budget and spread (the paper's ``Trans``: neurons found on another task). It carries its own
               score and modules, so it takes neither ``score`` nor ``targets``

The canonical text (defaults left out, keys in this order, long spread names) is the method's key in the results,
so ``neft:match-lora:8`` is the paper's selection as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

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
METHOD_HELP = ("base, full, embed, in-out, lora:R, neft:P, neft:match-lora:R, neft-random:..., neft-reversed:..., "
               "neft[score=S,spread=G,targets=T]:...")
# The spreads of a NeFT budget, each with its short name.
SPREADS = {spread: spread.removeprefix("per-") for spread in SPREAD_NAMES}
OPTIONS = ("score", "spread", "targets", "calibration")
ALL_LINEAR = "all-linear"
# peft's regex for every Linear inside a numbered decoder block (what LoRA's all-linear adapts there).
_BLOCK_LINEARS = r"(.*\.)?\d+\..*"


@dataclass(frozen=True)
class Method:
    """One parsed method; ``spec`` is its canonical text, the key of its runs in the results.

    Each kind is a subclass (:data:`KINDS`) that owns what differs between kinds: what it trains
    (:meth:`prepare`), its default learning rate (common defaults, not tuned here: use ``lr_grid``), its label and
    colour in plots, whether it trains at all and keeps a peft adapter, and, for NeFT, its calibration.
    """

    spec: str
    kind: ClassVar[str]
    default_lr: ClassVar[float]
    colour: ClassVar[str]
    trains: ClassVar[bool] = True
    keeps_adapter: ClassVar[bool] = False  # a peft adapter: saved, and sized, as peft stores it

    @property
    def label(self) -> str:
        """The family a plot draws in one colour."""
        return self.kind

    def described(self) -> dict[str, Any]:
        """What a result row records of the method besides its spec."""
        return {"kind": self.kind, "strategy": None}

    def trained(self, model: PreTrainedModel) -> list[torch.nn.Parameter]:
        """The base-model parameters this method trains in place (none: an adapter's, or nothing)."""
        return []

    def prepare(self, model: PreTrainedModel, seed: int, selection: NeuronSelection | None = None,
                lora_target_modules: Sequence[str] = ()) -> torch.nn.Module:
        """``model`` made trainable the way this method trains it, everything else frozen."""
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.trained(model):
            p.requires_grad_(True)
        return model

    def rows(self, model: PreTrainedModel, scores: NeuronScores | None, seed: int, config: Any) -> NeuronSelection | None:
        """The rows a run of this method trains in a comparison of ``config`` (None: it selects none)."""
        return None

    def paired_baselines(self) -> tuple[str, ...]:
        """The specs of the methods a run of this one is tested against, seed by seed."""
        return ()

    def calibration_key(self, seed: int) -> str | None:
        """The calibration a run of this method needs (None: none)."""
        return None


@dataclass(frozen=True)
class Base(Method):
    """No training: the zero-shot base model, evaluated once for the first seed."""

    kind, default_lr, colour, trains = "base", 0.0, "#7f7f7f", False


@dataclass(frozen=True)
class Full(Method):
    """Every parameter."""

    kind, default_lr, colour = "full", 5e-5, "#2ca02c"

    def trained(self, model: PreTrainedModel) -> list[torch.nn.Parameter]:
        return list(model.parameters())


@dataclass(frozen=True)
class Embed(Method):
    """The input embedding only (tied to the LM head in SmolLM2, so that too)."""

    kind, default_lr, colour = "embed", 1e-3, "#bcbd22"

    def trained(self, model: PreTrainedModel) -> list[torch.nn.Parameter]:
        return [model.get_input_embeddings().weight]


@dataclass(frozen=True)
class InOut(Method):
    """The MLP input and output projections, ``up_proj`` and ``down_proj``, fully."""

    kind, default_lr, colour = "in-out", 5e-5, "#17becf"

    def trained(self, model: PreTrainedModel) -> list[torch.nn.Parameter]:
        return [m.weight for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in DEFAULT_TARGET_MODULES]


@dataclass(frozen=True)
class Lora(Method):
    """peft LoRA of rank ``rank`` (alpha 2r, no dropout) on the comparison's LoRA modules."""

    rank: int
    kind, default_lr, colour, keeps_adapter = "lora", 1e-3, "#1f77b4", True

    def prepare(self, model: PreTrainedModel, seed: int, selection: NeuronSelection | None = None,
                lora_target_modules: Sequence[str] = ()) -> torch.nn.Module:
        super().prepare(model, seed)
        config = LoraConfig(r=self.rank, lora_alpha=2 * self.rank, lora_dropout=0.0,
                            target_modules=list(lora_target_modules) or "all-linear")
        return get_peft_model(model, config)


@dataclass(frozen=True)
class Neft(Method):
    """NeFT rows under a budget (``percent`` of all parameters, or LoRA ``rank``'s count), chosen by ``strategy``
    from ``score``'s calibration, spread as ``spread`` says, among ``targets``."""

    rank: int | None = None  # the LoRA rank whose parameter count the budget matches
    percent: float | None = None  # the budget as % of all parameters
    strategy: str = "lowest"  # lowest (the paper's), random or reversed rows
    score: str = "cosine"
    spread: str = "global"
    targets: str | None = None  # "all-linear", names joined by "+", or None (the comparison's targets)
    calibration: str | None = None  # the name of a stored calibration (None: computed in the comparison)
    kind, default_lr, keeps_adapter = "neft", 5e-4, True

    @property
    def label(self) -> str:
        return "neft" if self.strategy == "lowest" else f"neft-{self.strategy}"

    @property
    def colour(self) -> str:  # type: ignore[override]
        return {"lowest": "#ff7f0e", "random": "#9467bd", "reversed": "#8c564b"}[self.strategy]

    def described(self) -> dict[str, Any]:
        return {"kind": self.kind, "strategy": self.strategy}

    def prepare(self, model: PreTrainedModel, seed: int, selection: NeuronSelection | None = None,
                lora_target_modules: Sequence[str] = ()) -> torch.nn.Module:
        if selection is None:
            raise ValueError(f"{self.spec} trains selected rows: give its selection (select_for).")
        super().prepare(model, seed)
        return get_peft_model(model, NeFTConfig.from_selection(selection))

    def rows(self, model: PreTrainedModel, scores: NeuronScores | None, seed: int, config: Any) -> NeuronSelection:
        """From its calibration's ``scores``; random rows need only the target modules' shapes."""
        if self.strategy == "random":
            scores = shape_scores(model, neft_targets(self, config))
        return select_for(model, self, scores, seed, config.lora_target_modules)

    def paired_baselines(self) -> tuple[str, ...]:
        """The LoRA whose count it matches; unless it is the paper's selection, also the paper's selection and
        random rows at the same budget (never itself): a scorer's verdict needs both (docs/results/PLAN-scorers.md)."""
        budget = self.spec.partition(":")[2]
        paper, random = f"neft:{budget}", f"neft-random:{budget}"
        lora = (f"lora:{self.rank}",) if self.rank else ()
        return lora if self.spec == paper else (*lora, *(s for s in (paper, random) if s != self.spec))

    def calibration_key(self, seed: int) -> str | None:
        """``calibration@seed0`` for the paper's cosine on the comparison's targets (the name older folders cached it
        under), ``calibration[score=gradient,targets=all-linear]@seed0`` otherwise; random rows need none. The
        spread only selects, so variants that differ in it share one calibration. A stored calibration is
        ``calibration[stored=NAME]`` whatever the seed: it was computed once, elsewhere."""
        if self.strategy == "random":
            return None
        if self.calibration:
            return f"calibration[stored={self.calibration}]"
        options = ",".join(f"{k}={v}" for k, v in (("score", self.score), ("targets", self.targets))
                           if v not in ("cosine", None))
        return f"calibration{f'[{options}]' if options else ''}@seed{seed}"


KINDS: dict[str, type[Method]] = {kind.kind: kind for kind in (Base, Full, Embed, InOut, Lora, Neft)}
# Per-kind learning rates when nothing else is given.
DEFAULT_LR = {name: kind.default_lr for name, kind in KINDS.items()}


def parse_method(text: str) -> Method:
    """Parse one method name such as ``lora:8``, ``neft:0.5%``, ``neft-random:match-lora:8`` or
    ``neft[score=gradient,spread=module]:match-lora:8``; a bad one is a :class:`~peft_neft.errors.UsageError`."""
    spec = text.strip().lower()
    if spec in ("base", "full", "embed", "in-out"):
        return KINDS[spec](spec)
    match = re.fullmatch(r"([a-z-]+)\[([^\[\]]*)\]:(.*)", spec)
    if match:
        head, options, arg = match.groups()
    else:
        (head, _, arg), options = spec.partition(":"), ""
    if match and head not in NEFT_STRATEGIES:
        raise UsageError(f"Only NeFT methods take options in brackets ({', '.join(NEFT_STRATEGIES)}), not {text!r}.")
    try:
        if head == "lora" and re.fullmatch(r"\d+", arg) and int(arg) > 0:
            return Lora(spec, rank=int(arg))
        if head in NEFT_STRATEGIES:
            strategy = NEFT_STRATEGIES[head]
            variant = _variant(options, strategy, text)
            budget = re.fullmatch(r"match-lora:(\d+)", arg)
            if budget and int(budget.group(1)) > 0:
                return Neft(_spec(head, variant, arg), rank=int(budget.group(1)), strategy=strategy, **variant)
            percent = float(arg.rstrip("%"))
            if 0 < percent <= 100:
                return Neft(_spec(head, variant, arg), percent=percent, strategy=strategy, **variant)
    except UsageError:
        raise
    except ValueError:  # a budget that is no number
        pass
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
    if strategy == "random" and ("score" in variant or "calibration" in variant):
        taken = "score" if "score" in variant else "calibration"
        raise UsageError(f"{text!r}: random rows are drawn by the seed, so they take no {taken}; leave {taken}= out.")
    for key in ("score", "targets"):
        if "calibration" in variant and key in variant:
            own = "score" if key == "score" else "modules"
            raise UsageError(f"{text!r}: a stored calibration carries its own {own}; leave {key}= out.")
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
    if key == "calibration":
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", value):
            raise UsageError(f"{text!r}: calibration= takes a name (letters, digits, _ . -), not {value!r}; give its "
                             f"file with --stored-calibration NAME=FILE.")
        return value
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


def paired_baselines(spec: str) -> tuple[str, ...]:
    """What a method is tested against: NeFT against the LoRA rank it matches, any other selection also against the
    paper's and random rows."""
    return parse_method(spec).paired_baselines()


def prepare_model(model: PreTrainedModel, method: Method, seed: int, scores: Any = None,
                  selection: NeuronSelection | None = None, lora_target_modules: Sequence[str] = ()) -> torch.nn.Module:
    """Make ``model`` trainable the way ``method`` says (NeFT needs the calibration ``scores``, or its ``selection``).

    ``lora_target_modules``: what LoRA adapts and a match-lora budget counts (none: every decoder-block Linear).
    """
    if isinstance(method, Neft) and selection is None:
        selection = select_for(model, method, scores, seed, lora_target_modules)
    return method.prepare(model, seed, selection, lora_target_modules)



def select_for(model: PreTrainedModel, method: Neft, scores: Any, seed: int,
               lora_target_modules: Sequence[str] = ()) -> NeuronSelection:
    """The NeFT neuron selection of ``method`` from calibration ``scores``, spread as the method says (match-lora:
    LoRA on ``lora_target_modules``, none given: every decoder-block Linear)."""
    if method.rank is not None:
        budget = Budget.from_lora(model, method.rank, list(lora_target_modules) or None)
    else:
        budget = Budget(percent=method.percent)
    return select_neurons(scores, budget=budget, strategy=method.strategy, seed=seed, spread=method.spread)


def neft_targets(method: Neft, config: Any) -> TargetModules:
    """The modules whose rows a NeFT ``method`` scores and trains in a comparison of ``config``: its ``targets``,
    or the comparison's ``neft_target_modules``; ``all-linear``: LoRA's modules (none set: every block Linear)."""
    if method.targets is None:
        return tuple(config.neft_target_modules)
    if method.targets == ALL_LINEAR:
        return tuple(config.lora_target_modules) or _BLOCK_LINEARS
    return tuple(method.targets.split("+"))


def calibration_key(method: Method, seed: int) -> str | None:
    """The name of the calibration a run of ``method`` needs (None: none), shared by every variant that needs it."""
    return method.calibration_key(seed)



def shape_scores(model: PreTrainedModel, target_modules: TargetModules) -> NeuronScores:
    """Scores that carry only the target modules' shapes: all random rows need, so no calibration is run."""
    return replace(score_models(model, model, target_modules), method="none (random rows)")
