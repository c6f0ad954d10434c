"""Scores with the reference libraries: BLEU and chrF from sacrebleu, ROUGE-1/2/L from rouge-score.

rouge-score's default tokenizer keeps only ``[a-z0-9]`` and so deletes every accented letter
("été" -> "t"); French, German or Czech summaries are therefore tokenized here into lowercase
Unicode words. For unsegmented scripts (Chinese, Japanese, Thai) pass ``char_level=True``: every
non-space character is one token. Signatures of the scorers are returned with the scores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


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


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, object]:
    """Corpus BLEU and chrF (sacrebleu defaults, one reference each) and their signatures."""
    check_pairs(hypotheses, references)
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
    }


def rouge_per_document(hypotheses: Sequence[str], references: Sequence[str],
                       char_level: bool = False) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 (x100) of each pair, from rouge-score with the tokenizer described above."""
    check_pairs(hypotheses, references)
    tokenizer = CharTokenizer() if char_level else UnicodeWordTokenizer()
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    per_pair = [scorer.score(ref, hyp) for hyp, ref in zip(hypotheses, references)]
    return {name: [100 * s[name].fmeasure for s in per_pair] for name in ROUGE_TYPES}


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str], char_level: bool = False) -> dict[str, object]:
    """Mean ROUGE-1/2/L F1 (x100) over the pairs, with the tokenization named in ``signatures``."""
    per_document = rouge_per_document(hypotheses, references, char_level)
    scores: dict[str, object] = {name: sum(values) / len(values) for name, values in per_document.items()}
    scores["signatures"] = {"rouge": f"rouge-score|F1|tok:{'char' if char_level else 'unicode-words-lowercase'}|no-stemming"}
    return scores


def score(task: str, hypotheses: Sequence[str], references: Sequence[str], char_level: bool = False) -> dict[str, object]:
    """Translation: BLEU, chrF; summarization: ROUGE-1/2/L. Both come with their signatures."""
    if task == "translation":
        return translation_scores(hypotheses, references)
    if task == "summarization":
        return rouge_scores(hypotheses, references, char_level=char_level)
    raise ValueError(f"Unknown task {task!r}; use 'translation' or 'summarization'.")
