"""Turning scores into a :class:`NeuronSelection` under a budget (Algorithm 1, line 3, and its variants)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._targets import layer_index
from .budget import Budget
from .neuron_selection import NeuronSelection
from .neuron_scores import NeuronScores

STRATEGIES = ("lowest", "reversed", "random")
SPREADS = ("global", "per-layer", "per-module")


def _ranking(scores: torch.Tensor, strategy: str, seed: int) -> torch.Tensor:
    if strategy == "lowest":
        return torch.sort(scores, stable=True).indices
    if strategy == "reversed":
        return torch.sort(scores, descending=True, stable=True).indices
    if strategy == "random":
        return torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}.")


def _closest_prefix(costs: torch.Tensor, budget: float) -> int:
    """How many of the ranked rows to take so the summed cost is closest to the budget (ties: stay under)."""
    if costs.numel() == 0 or budget <= 0:
        return 0
    cum = torch.cumsum(costs, 0).double()
    under = int(torch.searchsorted(cum, torch.tensor([budget], dtype=torch.float64), right=True))
    if under == cum.numel():
        return under
    below = float(cum[under - 1]) if under else 0.0
    return under + 1 if float(cum[under]) - budget < budget - below else under


def _floor_prefix(costs: torch.Tensor, budget: float) -> int:
    cum = torch.cumsum(costs, 0).double()
    return int(torch.searchsorted(cum, torch.tensor([budget], dtype=torch.float64), right=True))


def select_neurons(
    scores: NeuronScores,
    percent: Optional[float] = None,
    num_params: Optional[int] = None,
    num_neurons: Optional[int] = None,
    strategy: str = "lowest",
    seed: int = 0,
    spread: str = "global",
    exclude: Optional[NeuronSelection] = None,
    model: Optional[nn.Module] = None,
    budget: Optional[Budget] = None,
) -> NeuronSelection:
    """Pick rows under exactly one budget: a :class:`~peft_neft.selection.budget.Budget`, or the keywords that make one.

    Args:
        scores: per-neuron scores; lower is selected first by ``"lowest"`` (the paper's NeFT_x%).
        percent: a share of ALL base-model parameters, in (0, 100]; a row costs its module's in_features.
        num_params: a parameter budget (e.g. :func:`budget_from_lora`).
        num_neurons: a number of rows, whatever they cost.
        budget: the budget already made (``Budget(percent=6)``, ``Budget.from_lora(model, 8)``), instead of the
            three keywords.
        strategy: ``"lowest"`` (paper), ``"reversed"`` (highest first, the paper's Reversed_x%), ``"random"`` (seeded).
        seed: seed of the ``"random"`` strategy.
        spread: where the budget may go. ``"global"``: one ranking over all target rows (the paper).
            ``"per-layer"``: each decoder block gets a share of the budget in proportion to its size (the summed
            cost of its target rows), rows ranked within it. ``"per-module"``: the same with each target module as
            its own share. With a quota, what the shares leave (at most one row each) is filled from the global
            ranking, so the budget is met as closely as with ``"global"``.
        exclude: rows that may not be selected (used by the NeFT_3%+Reversed_x% hybrid).
        model: if given, check first that the scores were computed on this model's shapes.

    The summed cost is the prefix of the ranking closest to the budget, so it never exceeds the
    budget by more than one row; ``metadata`` records the budget and what was achieved.
    """
    if model is not None:
        scores.check_model(model)
    if budget is None:
        budget = Budget(percent=percent, num_params=num_params, num_neurons=num_neurons)
    elif (percent, num_params, num_neurons) != (None, None, None):
        raise ValueError("Give budget= or one of percent=, num_params=, num_neurons=, not both.")
    value = budget.value(scores.total_params)
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}.")
    if spread not in SPREADS:
        raise ValueError(f"Unknown spread {spread!r}; choose one of {SPREADS}.")
    names = list(scores.scores)
    flat = torch.cat([scores.scores[n].detach().double().cpu() for n in names])
    if scores.method == "cosine" and bool((flat == 1.0).all()):
        raise ValueError(
            "No neuron changed: every cosine score is 1.0, so the fine-tuned weights equal the original ones in all "
            "target modules. Check that the two checkpoints differ (or that calibration trained: lr > 0)."
        )
    module_id = torch.cat([torch.full((scores.scores[n].numel(),), i) for i, n in enumerate(names)])
    row = torch.cat([torch.arange(scores.scores[n].numel()) for n in names])
    cost = torch.tensor([budget.cost(scores.in_features[n]) for n in names], dtype=torch.int64)[module_id]
    if exclude is not None:
        keep = torch.ones_like(row, dtype=torch.bool)
        for i, n in enumerate(names):
            if n in exclude.rows:
                keep[(module_id == i) & torch.isin(row, exclude.rows[n])] = False
        flat, module_id, row, cost = flat[keep], module_id[keep], row[keep], cost[keep]
    available = int(cost.sum())
    if value > available:
        raise ValueError(
            f"The budget ({value:.0f} {budget.unit}) exceeds everything the target modules offer "
            f"({available} {budget.unit}). Add target modules or lower the budget."
        )
    order = _ranking(flat, strategy, seed)
    chosen = _choose(order, cost, _groups(module_id, names, spread), value)
    if chosen.numel() == 0:
        raise ValueError(
            f"The budget ({value:.0f} {budget.unit}) is smaller than one row "
            f"({int(cost[order[0]])} {budget.unit} for the first-ranked row). Raise the budget."
        )
    rows: dict[str, torch.Tensor] = {}
    for i, n in enumerate(names):
        picked = row[chosen][module_id[chosen] == i]
        if picked.numel():
            rows[n] = torch.sort(picked).values.to(torch.int64)
    achieved = int(sum(scores.in_features[n] * r.numel() for n, r in rows.items()))
    metadata = {
        "method": scores.method,
        "strategy": strategy,
        "budget": {"unit": budget.unit, "value": value, "spec": budget.spec},
        "achieved_params": achieved,
        "achieved_neurons": int(chosen.numel()),
        "total_params": scores.total_params,
        "fingerprint": scores.fingerprint,
        "in_features": dict(scores.in_features),
        "out_features": scores.out_features,
        "spread": spread,
        "scores_metadata": scores.metadata,
    }
    if strategy == "random":
        metadata["seed"] = seed
    return NeuronSelection(rows=rows, scores={n: s.detach().cpu() for n, s in scores.scores.items()}, metadata=metadata)


def _groups(module_id: torch.Tensor, names: list[str], spread: str) -> Optional[torch.Tensor]:
    """The quota group of every flat row (its layer or its module), or None for one global ranking."""
    if spread == "global":
        return None
    if spread == "per-module":
        return module_id
    layers = [layer_index(n) for n in names]
    return torch.tensor([-1 if i is None else i for i in layers])[module_id]


def _choose(order: torch.Tensor, cost: torch.Tensor, group: Optional[torch.Tensor], budget: float) -> torch.Tensor:
    """Indices (into the flat arrays) of the chosen rows, costing about ``budget``.

    With groups, each gets ``budget`` times its share of the total cost (rounded down to whole rows, ranked
    within the group); the remainder is taken from the global ranking.
    """
    if group is None:
        return order[: _closest_prefix(cost[order], budget)]
    total = float(cost.sum())
    taken = []
    for g in torch.unique(group):
        ranked = order[group[order] == g]
        quota = budget * float(cost[ranked].sum()) / total
        taken.append(ranked[: _floor_prefix(cost[ranked], quota)])
    chosen = torch.cat(taken)
    rest = order[~torch.isin(order, chosen)]
    return torch.cat([chosen, rest[: _closest_prefix(cost[rest], budget - float(cost[chosen].sum()))]])


def select_hybrid(
    scores: NeuronScores, percent: float = 3.0, reversed_percent: float = 3.0, model: Optional[nn.Module] = None
) -> NeuronSelection:
    """The paper's NeFT_x%+Reversed_y% (its Figure 4): the lowest-scoring ``percent`` plus the highest ``reversed_percent``.

    Both shares are of all model parameters; the reversed rows are chosen among those the first part left.
    """
    base = select_neurons(scores, percent=percent, model=model)
    extra = select_neurons(scores, percent=reversed_percent, strategy="reversed", exclude=base)
    hybrid = base.union(extra)
    hybrid.metadata.update(
        strategy="hybrid", budget={"unit": "params", "spec": {"percent": percent, "reversed_percent": reversed_percent},
                                   "value": base.metadata["budget"]["value"] + extra.metadata["budget"]["value"]}
    )
    return hybrid
