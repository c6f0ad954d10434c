"""Budgets as the paper counts them: x% of all base-model parameters, a number of parameters (e.g. those of a
LoRA of rank r), or a number of rows. A :class:`Budget` is checked once, when it is made, and passed along."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from torch import nn

from .._shapes import count_params, module_shape
from .._targets import TargetModules, find_target_modules, is_row_module, layer_index


def budget_from_lora(model: nn.Module, r: int, target_modules: Optional[TargetModules] = None) -> int:
    """Trainable parameters of a LoRA of rank ``r``: ``r * (in + out)`` per adapted Linear.

    With ``target_modules=None`` LoRA adapts every Linear/Conv1D inside the decoder blocks (the
    paper's setting: not the LM head, not the embeddings); otherwise the modules peft's rule matches.
    Works on a model built on the meta device.
    """
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive int, got {r!r}.")
    if target_modules is None:
        modules = [
            m for name, m in model.named_modules()
            if is_row_module(m) and layer_index(name) is not None
        ]
        if not modules:
            raise ValueError("The model has no Linear layers inside numbered decoder blocks; pass target_modules.")
    else:
        modules = list(find_target_modules(model, target_modules).values())
    return sum(r * sum(module_shape(m)) for m in modules)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class Budget:
    """Exactly one of: ``percent`` of ALL base-model parameters, ``num_params`` parameters, ``num_neurons`` rows.

    ``lora_rank`` records where a ``num_params`` came from (see :meth:`from_lora`). A selected row costs
    its module's ``in_features`` against a parameter budget and 1 against a row budget.
    """

    percent: Optional[float] = None
    num_params: Optional[int] = None
    num_neurons: Optional[int] = None
    lora_rank: Optional[int] = None

    def __post_init__(self) -> None:
        given = sorted(k for k in ("percent", "num_params", "num_neurons") if getattr(self, k) is not None)
        if len(given) != 1:
            raise ValueError(f"Give exactly one budget: percent=, num_params= or num_neurons= (got {given or 'none'}).")
        if self.percent is not None and not 0 < float(self.percent) <= 100:
            raise ValueError(f"percent must lie in (0, 100] (a share of all model parameters), got {self.percent}.")
        for name in ("num_params", "num_neurons", "lora_rank"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.lora_rank is not None and self.num_params is None:
            raise ValueError("lora_rank records where num_params came from; use Budget.from_lora(model, r).")

    @classmethod
    def from_lora(cls, model: nn.Module, r: int, target_modules: Optional[TargetModules] = None) -> Budget:
        """As many parameters as a LoRA of rank ``r`` (:func:`budget_from_lora`)."""
        return cls(num_params=budget_from_lora(model, r, target_modules), lora_rank=r)

    @property
    def unit(self) -> str:
        """``"neurons"`` for a row budget, ``"params"`` otherwise."""
        return "neurons" if self.num_neurons is not None else "params"

    @property
    def spec(self) -> dict:
        """The budget as given (JSON-serialisable), as a selection records it."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def value(self, total_params: int) -> float:
        """The budget in its unit, for a model of ``total_params`` parameters."""
        if self.percent is not None:
            return float(self.percent) / 100.0 * total_params
        return self.num_neurons if self.num_neurons is not None else self.num_params

    def cost(self, in_features: int) -> int:
        """What one selected row costs against this budget."""
        return in_features if self.unit == "params" else 1

    def check_fits(self, model: nn.Module, target_modules: TargetModules) -> None:
        """Refuse a budget the target modules of ``model`` cannot meet, before any scoring."""
        shapes = [module_shape(m) for m in find_target_modules(model, target_modules).values()]
        value = self.value(count_params(model))
        available = sum(out * self.cost(in_f) for out, in_f in shapes)
        if value > available:
            raise ValueError(
                f"The budget ({value:.0f} {self.unit}) exceeds everything the target modules offer "
                f"({available} {self.unit}). Add target modules or lower the budget."
            )
        cheapest = min(self.cost(in_f) for _, in_f in shapes)
        if 2 * value < cheapest:
            raise ValueError(
                f"The budget ({value:.0f} {self.unit}) is smaller than one row ({cheapest} {self.unit} for the "
                "cheapest). Raise the budget."
            )
