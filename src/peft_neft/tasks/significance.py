"""Paired significance tests: do two systems' scores on the same test set differ beyond chance?

Both use paired bootstrap resampling (Koehn 2004, as in Moses' ``bootstrap-hypothesis-difference-
significance.pl``): resample the test set with replacement, score both systems on each resample, and
count how often the centred absolute difference exceeds the observed one. Translation metrics go
through sacrebleu's own ``PairedTest`` (BLEU, chrF); ROUGE, the mean of per-document F1 scores, is
resampled the same way here, since rouge-score has no such test. The RNG seed is fixed (sacrebleu's
default 12345, ``SACREBLEU_SEED`` changes it), so a report is reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import sacrebleu
from sacrebleu.significance import PairedTest

from .metrics import check_pairs, rouge_per_document

DEFAULT_SAMPLES = 1000


def paired_bootstrap(task: str, system: Sequence[str], baseline: Sequence[str], references: Sequence[str], *,
                     char_level: bool = False, samples: int = DEFAULT_SAMPLES) -> dict[str, dict[str, float]]:
    """Per metric: ``delta`` (system minus baseline score) and the two-sided bootstrap ``p_value``."""
    check_pairs(system, references)
    check_pairs(baseline, references)
    if task == "translation":
        return _translation(list(system), list(baseline), list(references), samples)
    if task == "summarization":
        return _rouge(system, baseline, references, char_level, samples)
    raise ValueError(f"Unknown task {task!r}; use 'translation' or 'summarization'.")


def _translation(system: list[str], baseline: list[str], references: list[str], samples: int) -> dict[str, dict[str, float]]:
    metrics = {"bleu": sacrebleu.metrics.BLEU(), "chrf": sacrebleu.metrics.CHRF()}
    test = PairedTest([("baseline", baseline), ("system", system)], metrics, [references], test_type="bs",
                      n_samples=samples)
    _, results = test()  # keyed by sacrebleu's display names ("BLEU", "chrF2"), in the order of ``metrics``
    columns = [results[key] for key in results if key != "System"]
    return {name: {"delta": column[1].score - column[0].score, "p_value": column[1].p_value}
            for name, column in zip(metrics, columns)}


def _rouge(system: Sequence[str], baseline: Sequence[str], references: Sequence[str], char_level: bool,
           samples: int) -> dict[str, dict[str, float]]:
    ours = rouge_per_document(system, references, char_level)
    theirs = rouge_per_document(baseline, references, char_level)
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    rng = np.random.default_rng(None if seed.lower() == "none" else int(seed))
    resamples = rng.choice(len(references), size=(samples, len(references)), replace=True)
    out = {}
    for name in ours:
        a, b = np.asarray(ours[name]), np.asarray(theirs[name])
        observed = abs(a.mean() - b.mean())
        sampled = np.abs(a[resamples].mean(axis=1) - b[resamples].mean(axis=1))
        centred = sampled - sampled.mean()
        out[name] = {"delta": float(a.mean() - b.mean()),
                     "p_value": (int(np.sum(centred > observed)) + 1) / (samples + 1)}
    return out


def bootstrap_intervals(task: str, hypotheses: Sequence[str], references: Sequence[str], *, char_level: bool = False,
                        samples: int = DEFAULT_SAMPLES) -> dict[str, dict[str, float]]:
    """Per metric: the ``score`` and the half-width ``ci`` of its 95% bootstrap confidence interval.

    The resamples come from the same fixed seed as :func:`paired_bootstrap` (``SACREBLEU_SEED``), so
    systems scored on one test set are resampled identically: their intervals are paired.
    """
    check_pairs(hypotheses, references)
    if task == "translation":
        out = {}
        for name, metric in (("bleu", sacrebleu.metrics.BLEU()), ("chrf", sacrebleu.metrics.CHRF())):
            result = metric.corpus_score(list(hypotheses), [list(references)], n_bootstrap=samples)
            out[name] = {"score": result.score, "ci": result._ci}  # sacrebleu's own interval (no public accessor)
        return out
    if task == "summarization":
        per_document = rouge_per_document(hypotheses, references, char_level)
        seed = os.environ.get("SACREBLEU_SEED", "12345")
        rng = np.random.default_rng(None if seed.lower() == "none" else int(seed))
        resamples = rng.choice(len(references), size=(samples, len(references)), replace=True)
        out = {}
        for name, values in per_document.items():
            means = np.sort(np.asarray(values)[resamples].mean(axis=1))
            low, high = means[samples // 40], means[samples - samples // 40 - 1]
            out[name] = {"score": float(np.mean(values)), "ci": float(0.5 * (high - low))}
        return out
    raise ValueError(f"Unknown task {task!r}; use 'translation' or 'summarization'.")
