"""Metrics as per-sentence sufficient statistics: BLEU and chrF from sacrebleu, ROUGE-1/2/L from rouge-score.

A corpus score is a function of the summed statistics of its sentences, so a resampled test set
(bootstrap) is scored by summing rows, without scoring text again. sacrebleu's metrics have such
statistics (the matched n-gram counts its own ``PairedTest`` resamples); a ROUGE F1 averaged over
documents has the statistics ``(F1, 1)``.

rouge-score's default tokenizer keeps only ``[a-z0-9]`` and so deletes every accented letter
("été" -> "t"); French, German or Czech summaries are therefore tokenized here into lowercase
Unicode words. For unsegmented scripts (Chinese, Japanese, Thai) pass ``char_level=True``: every
non-space character is one token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer


class UnicodeWordTokenizer:
    """Lowercase Unicode word tokens (``\\w+``), the rouge-score tokenizer for non-ASCII languages."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


class CharTokenizer:
    """One token per non-space character, for scripts written without spaces between words."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    """Refuse unpaired or empty inputs with a message that says which."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references; they must pair up one to one.")
    if not references:
        raise ValueError("Nothing to score: the test set is empty.")


class Metric:
    """A corpus metric: ``name``, per-sentence ``statistics`` and the ``score`` of their sum.

    ``signature`` says how it is computed; metrics of one ``family`` (ROUGE-1/2/L) share one.
    """

    name: str
    family: str
    signature: str  # read after ``statistics``

    def statistics(self, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """(sentences, k) sufficient statistics, one row per hypothesis/reference pair."""
        raise NotImplementedError

    def score(self, totals: np.ndarray) -> float:
        """The corpus score of statistics summed over sentences (k,)."""
        raise NotImplementedError


class SacrebleuMetric(Metric):
    """A sacrebleu metric (``BLEU()``, ``CHRF()``) with one reference per sentence, at sacrebleu's defaults."""

    def __init__(self, name: str, metric: sacrebleu.metrics.base.Metric) -> None:
        self.name, self.family, self._metric = name, name, metric

    @property
    def signature(self) -> str:
        """sacrebleu's signature; it knows the number of references once statistics were extracted."""
        return str(self._metric.get_signature())

    def statistics(self, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        check_pairs(hypotheses, references)
        # sacrebleu's own PairedTest resamples these rows; they have no public accessor.
        return np.asarray(self._metric._extract_corpus_statistics(list(hypotheses), [list(references)]),
                          dtype=np.float64)

    def score(self, totals: np.ndarray) -> float:
        return float(self._metric._compute_score_from_stats(list(totals)).score)


class RougeMetric(Metric):
    """ROUGE F1 (x100) of one type, averaged over documents, with the tokenizer described above."""

    def __init__(self, rouge_type: str, char_level: bool = False) -> None:
        self.name, self.family = rouge_type, "rouge"
        self._scorer = rouge_scorer.RougeScorer([rouge_type], tokenizer=CharTokenizer() if char_level else
                                                UnicodeWordTokenizer())
        self.signature = f"rouge-score|F1|tok:{'char' if char_level else 'unicode-words-lowercase'}|no-stemming"

    def statistics(self, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        check_pairs(hypotheses, references)
        f1 = [100 * self._scorer.score(ref, hyp)[self.name].fmeasure for hyp, ref in zip(hypotheses, references)]
        return np.stack([np.asarray(f1, dtype=np.float64), np.ones(len(f1))], axis=1)

    def score(self, totals: np.ndarray) -> float:
        return float(totals[0] / totals[1])


def corpus_scores(metrics: Sequence[Metric], hypotheses: Sequence[str],
                  references: Sequence[str]) -> dict[str, object]:
    """Each metric's corpus score, and ``signatures`` (metric family -> how it was computed)."""
    scores: dict[str, object] = {m.name: m.score(m.statistics(hypotheses, references).sum(0)) for m in metrics}
    scores["signatures"] = {m.family: m.signature for m in metrics}
    return scores
