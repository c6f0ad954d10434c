"""Budgets as the paper counts them: x% of all base-model parameters, or the parameters of a LoRA of rank r."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from .._shapes import module_shape
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


@dataclass(frozen=True)
class Budget:
    """A resolved budget: ``value`` parameters (``unit="params"``) or rows (``unit="neurons"``)."""

    unit: str
    value: float
    spec: dict

    def cost(self, in_features: int) -> int:
        """What one selected row costs against this budget."""
        return in_features if self.unit == "params" else 1


def resolve_budget(
    total_params: int,
    percent: Optional[float] = None,
    num_params: Optional[int] = None,
    num_neurons: Optional[int] = None,
) -> Budget:
    """Check that exactly one budget is given and turn it into a :class:`Budget`."""
    given = {k: v for k, v in (("percent", percent), ("num_params", num_params), ("num_neurons", num_neurons)) if v is not None}
    if len(given) != 1:
        raise ValueError(
            f"Give exactly one budget: percent=, num_params= or num_neurons= (got {sorted(given) or 'none'})."
        )
    if percent is not None:
        if not 0 < float(percent) <= 100:
            raise ValueError(f"percent must lie in (0, 100] (a share of all model parameters), got {percent}.")
        return Budget("params", float(percent) / 100.0 * total_params, given)
    name, value = next(iter(given.items()))
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return Budget("params" if name == "num_params" else "neurons", int(value), given)
