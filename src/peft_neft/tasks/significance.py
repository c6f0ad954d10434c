"""Paired bootstrap tests and bootstrap intervals over any :class:`~peft_neft.tasks.metrics.Metric`.

The test (Koehn 2004; Efron and Tibshirani 1993, section 16.4) resamples the test set with
replacement, the SAME sentences for both systems, and scores both on each resample: ``d_s`` is the
resampled difference and ``d`` the observed one. Under the null hypothesis the differences are
centred at zero, so the two-sided p-value is the share of resamples at least as far from their mean
as the observed difference is from zero: ``p = (#{|d_s - mean(d_s)| >= |d|} + 1) / (samples + 1)``.

This differs from sacrebleu's ``PairedTest`` (``test_type="bs"``, after Moses'
``bootstrap-hypothesis-difference-significance.pl``) in two ways. sacrebleu counts ``|d_s| - mean(|d_s|)
> |d|``: strictly greater, so two identical systems (every ``d_s`` is 0) get ``p = 1/(samples+1)``,
"significant"; and centring the absolute differences makes the test roughly one-sided, so p-values
under the null hypothesis crowd below 0.5 instead of being uniform. Here a zero difference gives
``p = 1`` and a random relabelling of two systems gives uniform p-values. The resampled scores use
sacrebleu's own sufficient statistics. The RNG seed is sacrebleu's (``SACREBLEU_SEED``, default 12345),
so a report is reproducible and every system of one test set is resampled identically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from sacrebleu.significance import estimate_ci

from .metrics import Metric, check_pairs

DEFAULT_SAMPLES = 1000


def resamples(size: int, samples: int) -> np.ndarray:
    """(samples, size) sentence indices drawn with replacement from sacrebleu's seed (``SACREBLEU_SEED``)."""
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    rng = np.random.default_rng(None if seed.lower() == "none" else int(seed))
    return rng.choice(size, size=(samples, size), replace=True)


def _resampled_scores(metric: Metric, statistics: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.array([metric.score(statistics[rows].sum(0)) for rows in indices])


def paired_bootstrap(metrics: Sequence[Metric], system: Sequence[str], baseline: Sequence[str],
                     references: Sequence[str], *, samples: int = DEFAULT_SAMPLES) -> dict[str, dict[str, float]]:
    """Per metric: ``delta`` (system minus baseline score) and the two-sided paired bootstrap ``p_value``."""
    check_pairs(system, references)
    check_pairs(baseline, references)
    indices = resamples(len(references), samples)
    out = {}
    for metric in metrics:
        ours, theirs = metric.statistics(system, references), metric.statistics(baseline, references)
        delta = metric.score(ours.sum(0)) - metric.score(theirs.sum(0))
        sampled = _resampled_scores(metric, ours, indices) - _resampled_scores(metric, theirs, indices)
        extreme = int(np.sum(np.abs(sampled - sampled.mean()) >= abs(delta)))
        out[metric.name] = {"delta": float(delta), "p_value": (extreme + 1) / (samples + 1)}
    return out


def bootstrap_intervals(metrics: Sequence[Metric], hypotheses: Sequence[str], references: Sequence[str], *,
                        samples: int = DEFAULT_SAMPLES) -> dict[str, dict[str, float]]:
    """Per metric: the ``score`` and the half-width ``ci`` of its 95% bootstrap interval (sacrebleu's estimate).

    The resamples are those of :func:`paired_bootstrap`, so systems scored on one test set are
    resampled identically: their intervals are paired.
    """
    check_pairs(hypotheses, references)
    indices = resamples(len(references), samples)
    out = {}
    for metric in metrics:
        statistics = metric.statistics(hypotheses, references)
        _, half_width = estimate_ci(_resampled_scores(metric, statistics, indices))
        out[metric.name] = {"score": metric.score(statistics.sum(0)), "ci": float(half_width)}
    return out
