"""Neuron utilization (paper section 6): Rank, ΔRank, Avg(|ΔRank|), percentile buckets, neuron categories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .._targets import DEFAULT_TARGET_MODULES, TargetModules, is_row_module
from ..selection.neuron_selection import NeuronSelection
from .collect import CorrelateWith, PearsonScores, neuron_pearson_scores
from .inputs import Inputs

#: Default "strongly affected" threshold as a fraction of all analysed neurons. The paper uses
#: |ΔRank| > 100,000 on Llama-2-7b, whose analysed (up_proj, down_proj) rows number
#: 32 * (11008 + 4096) = 483,328; 100,000 / 483,328 = 0.207.
DEFAULT_STRONG_THRESHOLD = 0.2
#: Bucket edges in top-percent of model A's Pearson ranking (paper Figure 3 starts at 0-0.03 %).
DEFAULT_BUCKET_EDGES = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0, 100.0)
PAPER_NEURONS_7B = 32 * (11008 + 4096)
PAPER_THRESHOLD_7B = 100_000


def ranks_descending(scores: torch.Tensor) -> torch.Tensor:
    """1-based rank of each score when sorted in descending order (ties keep neuron order)."""
    order = torch.argsort(-scores, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, scores.numel() + 1)
    return ranks


def resolve_threshold(strong_threshold: Union[int, float], num_neurons: int) -> int:
    """|ΔRank| threshold as a count: an int is a count, a float in (0, 1) a fraction of ``num_neurons``."""
    if isinstance(strong_threshold, bool) or not isinstance(strong_threshold, (int, float)):
        raise TypeError(f"strong_threshold must be an int (count) or a float fraction, got {strong_threshold!r}.")
    if isinstance(strong_threshold, int):
        if strong_threshold < 0:
            raise ValueError(f"strong_threshold as a count must be >= 0, got {strong_threshold}.")
        return strong_threshold
    if not 0.0 < strong_threshold < 1.0:
        raise ValueError(
            f"strong_threshold as a float is a fraction of the neuron count and must lie in (0, 1), got "
            f"{strong_threshold}. Pass an int for an absolute |ΔRank| count."
        )
    return int(round(strong_threshold * num_neurons))


def selection_mask(selection: NeuronSelection, scores: PearsonScores) -> torch.Tensor:
    """Boolean mask over the flat neuron order: True for neurons in ``selection`` (the trained rows)."""
    offsets = scores.offsets()
    sizes = dict(zip(scores.modules, scores.sizes))
    unknown = [name for name in selection.rows if name not in offsets]
    if unknown:
        raise ValueError(
            f"The selection names module(s) {unknown[:3]} that were not analysed or that this model does not have. "
            "Was the selection made for another model? Module names are relative to the base model."
        )
    mask = torch.zeros(sum(scores.sizes), dtype=torch.bool)
    for name, rows in selection.rows.items():
        rows = rows.to(torch.int64)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= sizes[name]):
            raise ValueError(
                f"The selection has rows up to {int(rows.max())} for {name!r}, which has {sizes[name]} neurons: "
                "the selection was made for another model."
            )
        mask[offsets[name] + rows] = True
    return mask


@dataclass
class UtilizationReport:
    """Per-neuron scores, ranks and categories of model B relative to model A, with summaries."""

    scores: PearsonScores
    rank_a: torch.Tensor
    rank_b: torch.Tensor
    strong_threshold: int
    bucket_edges: tuple[float, ...]
    in_selection: Optional[torch.Tensor] = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_neurons(self) -> int:
        return int(self.rank_a.numel())

    @property
    def delta_rank(self) -> torch.Tensor:
        """Rank in B minus rank in A: positive means the neuron moved down (is used less) in B."""
        return self.rank_b - self.rank_a

    @property
    def avg_abs_delta_rank(self) -> float:
        """The paper's Avg(ΔRank): the mean of |ΔRank| over all neurons."""
        return float(self.delta_rank.abs().double().mean())

    @property
    def strongly_affected(self) -> torch.Tensor:
        return self.delta_rank.abs() > self.strong_threshold

    @property
    def suppressed(self) -> torch.Tensor:
        """Strongly affected neurons whose rank dropped (ΔRank > 0)."""
        return self.strongly_affected & (self.delta_rank > 0)

    @property
    def indirectly_affected(self) -> Optional[torch.Tensor]:
        """Strongly affected neurons that were not trained (outside the selection); None without one."""
        return None if self.in_selection is None else self.strongly_affected & ~self.in_selection

    def categories(self) -> dict[str, torch.Tensor]:
        found = {"strongly_affected": self.strongly_affected, "suppressed": self.suppressed}
        if self.in_selection is not None:
            found["indirectly_affected"] = self.indirectly_affected
        return found

    def category_counts(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.categories().items()}

    def per_layer_counts(self) -> dict[int, dict[str, int]]:
        """Category counts per decoder layer (paper Figure 6); -1 collects modules outside numbered layers."""
        layer_of = torch.cat([torch.full((s,), l) for s, l in zip(self.scores.sizes, self.scores.layers)])
        counts: dict[int, dict[str, int]] = {}
        for layer in sorted(set(self.scores.layers)):
            in_layer = layer_of == layer
            counts[layer] = {"neurons": int(in_layer.sum())}
            counts[layer].update({name: int((mask & in_layer).sum()) for name, mask in self.categories().items()})
        return counts

    def per_module_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for name, start, size in zip(self.scores.modules, self.scores.offsets().values(), self.scores.sizes):
            part = slice(start, start + size)
            counts[name] = {"neurons": size, "avg_abs_delta_rank": float(self.delta_rank[part].abs().double().mean())}
            counts[name].update({c: int(mask[part].sum()) for c, mask in self.categories().items()})
        return counts

    def buckets(self) -> list[dict[str, Any]]:
        """Avg(|ΔRank|) per top-percentile bucket of model A's Pearson ranking (paper Figure 3)."""
        percentile = (self.rank_a - 1).double() / self.num_neurons * 100.0
        result = []
        for low, high in zip(self.bucket_edges[:-1], self.bucket_edges[1:]):
            inside = (percentile >= low) & (percentile < high)
            count = int(inside.sum())
            mean = float(self.delta_rank[inside].abs().double().mean()) if count else None
            result.append({"from_percent": low, "to_percent": high, "neurons": count, "avg_abs_delta_rank": mean})
        return result

    def summary(self) -> dict[str, Any]:
        """Everything except the per-neuron vectors, JSON-serializable."""
        return {
            "num_neurons": self.num_neurons,
            "num_tokens": self.scores.num_tokens,
            "correlate_with": self.scores.correlate_with,
            "avg_abs_delta_rank": self.avg_abs_delta_rank,
            "avg_abs_delta_rank_fraction": self.avg_abs_delta_rank / self.num_neurons,
            "strong_threshold": self.strong_threshold,
            "category_counts": self.category_counts(),
            "buckets": self.buckets(),
            "per_layer": {str(k): v for k, v in self.per_layer_counts().items()},
            "per_module": self.per_module_counts(),
            "mean_score_a": float(self.scores.scores_a.mean()),
            "mean_score_b": float(self.scores.scores_b.mean()),
            "settings": self.settings,
        }


def compare_utilization(
    scores: PearsonScores,
    selection: Optional[NeuronSelection] = None,
    strong_threshold: Union[int, float] = DEFAULT_STRONG_THRESHOLD,
    bucket_edges: Sequence[float] = DEFAULT_BUCKET_EDGES,
    settings: Optional[dict[str, Any]] = None,
) -> UtilizationReport:
    """Ranks, ΔRank and categories from the Pearson scores of two models."""
    edges = tuple(float(e) for e in bucket_edges)
    if len(edges) < 2 or edges[0] != 0.0 or edges[-1] != 100.0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bucket_edges must increase strictly from 0 to 100 (percent), got {edges}.")
    total = sum(scores.sizes)
    return UtilizationReport(
        scores=scores,
        rank_a=ranks_descending(scores.scores_a),
        rank_b=ranks_descending(scores.scores_b),
        strong_threshold=resolve_threshold(strong_threshold, total),
        bucket_edges=edges,
        in_selection=None if selection is None else selection_mask(selection, scores),
        settings=dict(settings or {}),
    )


def analyze_models(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Inputs,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    *,
    selection: Optional[NeuronSelection] = None,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    correlate_with: CorrelateWith = "layer_output",
    strong_threshold: Union[int, float] = DEFAULT_STRONG_THRESHOLD,
    bucket_edges: Sequence[float] = DEFAULT_BUCKET_EDGES,
    batch_size: int = 8,
    max_length: int = 128,
    progress: bool = True,
) -> UtilizationReport:
    """Neuron-utilization comparison of ``model_b`` against ``model_a`` (paper section 6).

    ``selection`` (the neurons trained to turn A into B) enables the "indirectly affected" category; its
    modules are analysed even if ``target_modules`` does not name them. ``strong_threshold`` is an int
    count of ranks or a float fraction of the analysed neurons (default 0.2, the paper's 100,000 of
    483,328 Llama-2-7b neurons).
    """
    if selection is not None:
        names = dict(model_a.named_modules())
        foreign = [n for n in selection.rows if not is_row_module(names.get(n))]
        if foreign:
            raise ValueError(
                f"The selection names {foreign[:3]}, which are not Linear/Conv1D layers of model_a: the selection was made "
                "for another model. Module names are relative to the base model."
            )
    scores = neuron_pearson_scores(
        model_a, model_b, inputs, tokenizer,
        target_modules=target_modules,
        extra_modules=list(selection.rows) if selection is not None else (),
        correlate_with=correlate_with, batch_size=batch_size, max_length=max_length, progress=progress,
    )
    settings = {
        "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules),
        "strong_threshold_arg": strong_threshold,
        "num_inputs": len(inputs),
        "batch_size": batch_size,
        "max_length": max_length,
        "selection_neurons": None if selection is None else selection.num_neurons,
    }
    return compare_utilization(scores, selection, strong_threshold, bucket_edges, settings)
