"""Neuron analysis (paper section 6) and probe-based neuron selection (paper section 3).

- :func:`analyze_models`: per-neuron Pearson scores of two models, Rank, ΔRank, Avg(|ΔRank|),
  percentile buckets and the strongly affected / suppressed / indirectly affected categories.
- :func:`write_report`: JSON, PNG plots and a markdown page for a :class:`UtilizationReport`.
- :func:`probe_scores`: :class:`~peft_neft.NeuronScores` from per-layer ridge probes (select with ``select_neurons``).
"""

from .collect import PearsonScores, check_same_architecture, neuron_pearson_scores
from .inputs import load_texts
from .loading import load_analysis_model
from .probe import fit_ridge_classifier, probe_scores
from .report import write_report
from .streaming import StreamingPearson
from .utilization import (
    DEFAULT_STRONG_THRESHOLD,
    UtilizationReport,
    analyze_models,
    compare_utilization,
    ranks_descending,
)

__all__ = [
    "DEFAULT_STRONG_THRESHOLD",
    "PearsonScores",
    "StreamingPearson",
    "UtilizationReport",
    "analyze_models",
    "check_same_architecture",
    "compare_utilization",
    "fit_ridge_classifier",
    "load_analysis_model",
    "load_texts",
    "neuron_pearson_scores",
    "probe_scores",
    "ranks_descending",
    "write_report",
]
