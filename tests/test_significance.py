"""Paired bootstrap tests on real Django catalog strings, checked against the reference scorers."""

from __future__ import annotations

import pytest
import sacrebleu

from peft_neft.tasks import django_translation_pairs, score
from peft_neft.tasks.significance import paired_bootstrap


@pytest.fixture(scope="module")
def references():
    pairs = django_translation_pairs("fr")
    return list(pairs["train"]["target"][:120])


def _damaged(references, every):
    """The references with every ``every``-th one replaced by an unrelated string."""
    return [r if i % every else "Rien à voir." for i, r in enumerate(references)]


@pytest.mark.parametrize("task,metrics", [("translation", ("bleu", "chrf")),
                                          ("summarization", ("rouge1", "rouge2", "rougeL"))])
def test_delta_is_the_score_difference_and_p_separates_big_from_tiny_gaps(references, task, metrics):
    good, bad, almost_good = references, _damaged(references, 2), _damaged(references, 60)
    big = paired_bootstrap(task, good, bad, references, samples=300)
    tiny = paired_bootstrap(task, almost_good, good, references, samples=300)
    for name in metrics:
        expected = score(task, good, references)[name] - score(task, bad, references)[name]
        assert big[name]["delta"] == pytest.approx(expected) and expected > 10
        assert big[name]["p_value"] < 0.01  # half the test set ruined: far beyond resampling noise
        assert tiny[name]["delta"] < 0 and tiny[name]["p_value"] > 0.05  # 2 of 120 sentences: within it
    if task == "translation":
        direct = sacrebleu.corpus_bleu(bad, [references]).score - sacrebleu.corpus_bleu(good, [references]).score
        assert paired_bootstrap(task, bad, good, references, samples=50)["bleu"]["delta"] == pytest.approx(direct)


def test_reproducible_and_bad_input_refused(references):
    system = _damaged(references, 3)
    assert paired_bootstrap("summarization", system, references, references, samples=100) == \
        paired_bootstrap("summarization", system, references, references, samples=100)
    with pytest.raises(ValueError, match="119 hypotheses but 120 references"):
        paired_bootstrap("translation", references[:-1], references, references)
    with pytest.raises(ValueError, match="Unknown task"):
        paired_bootstrap("qa", references, references, references)
