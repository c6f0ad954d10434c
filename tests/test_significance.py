"""Paired bootstrap tests on real Django catalog strings, checked against the reference scorers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu

from peft_neft.tasks import TASKS, django_translation_pairs, get_task
from peft_neft.tasks.significance import resamples

METRICS = [("translation", ("bleu", "chrf")), ("summarization", ("rouge1", "rouge2", "rougeL", "chrf"))]


@pytest.fixture(scope="module")
def references():
    pairs = django_translation_pairs("fr")
    return list(pairs["train"]["target"][:120])


def _damaged(references, every):
    """The references with every ``every``-th one replaced by an unrelated string."""
    return [r if i % every else "Rien à voir." for i, r in enumerate(references)]


@pytest.mark.parametrize("task,metrics", METRICS)
def test_delta_is_the_score_difference_and_p_separates_big_from_tiny_gaps(references, task, metrics):
    good, bad, almost_good = references, _damaged(references, 2), _damaged(references, 60)
    big = TASKS[task].paired_test(good, bad, references, samples=300)
    tiny = TASKS[task].paired_test(almost_good, good, references, samples=300)
    for name in metrics:
        expected = get_task(task).score(good, references)[name] - get_task(task).score(bad, references)[name]
        assert big[name]["delta"] == pytest.approx(expected) and expected > 10
        assert big[name]["p_value"] < 0.01  # half the test set ruined: far beyond resampling noise
        assert tiny[name]["delta"] < 0 and tiny[name]["p_value"] > 0.05  # 2 of 120 sentences: within it
    if task == "translation":
        direct = sacrebleu.corpus_bleu(bad, [references]).score - sacrebleu.corpus_bleu(good, [references]).score
        assert TASKS[task].paired_test(bad, good, references, samples=50)["bleu"]["delta"] == pytest.approx(direct)


@pytest.mark.parametrize("task,metrics", METRICS)
def test_identical_outputs_give_p_1(references, task, metrics):
    system = _damaged(references, 3)
    tests = TASKS[task].paired_test(system, list(system), references, samples=200)
    assert {name: (t["delta"], t["p_value"]) for name, t in tests.items()} == {name: (0.0, 1.0) for name in metrics}


def _unpaired_p(metric, system, baseline, references, samples=1000):
    """The same test with the two systems resampled independently (what a paired test must not do)."""
    ours, theirs = metric.statistics(system, references), metric.statistics(baseline, references)
    delta = metric.score(ours.sum(0)) - metric.score(theirs.sum(0))
    first, second = resamples(len(references), samples), np.random.default_rng(1).permutation(resamples(len(references), samples))
    sampled = np.array([metric.score(ours[a].sum(0)) - metric.score(theirs[b].sum(0)) for a, b in zip(first, second)])
    return (np.sum(np.abs(sampled - sampled.mean()) >= abs(delta)) + 1) / (samples + 1)


@pytest.mark.parametrize("task,repaired", [("translation", 14), ("summarization", 7)])
def test_a_small_consistent_paired_gap_is_significant_where_unpaired_resampling_is_not(references, task, repaired):
    # Half the baseline's 120 sentences ruined; the system repairs a few of them and is otherwise identical
    # (corpus BLEU, not a mean over sentences, needs a few more to be clear of its noise).
    baseline = _damaged(references, 2)
    system = [references[i] if i % 2 == 0 and i < 2 * repaired else b for i, b in enumerate(baseline)]
    tests = TASKS[task].paired_test(system, baseline, references)
    for metric in TASKS[task].metrics(False):
        assert tests[metric.name]["delta"] > 0 and tests[metric.name]["p_value"] < 0.05, metric.name
        assert _unpaired_p(metric, system, baseline, references) > 0.2, metric.name


def test_a_random_relabelling_gives_uniform_p_values(references):
    # Two different systems, each sentence's pair of outputs swapped by a coin: no system is better.
    first, second = _damaged(references, 2), _damaged(references, 3)
    p_values = {"bleu": [], "chrf": []}
    for seed in range(40):
        coins = random.Random(seed)
        swap = [coins.random() < 0.5 for _ in references]
        system = [b if s else a for a, b, s in zip(first, second, swap)]
        baseline = [a if s else b for a, b, s in zip(first, second, swap)]
        for name, test in TASKS["translation"].paired_test(system, baseline, references, samples=200).items():
            p_values[name].append(test["p_value"])
    for name, values in p_values.items():
        counts, _ = np.histogram(values, bins=4, range=(0, 1))
        assert counts.min() >= 4, (name, counts)  # about 10 of 40 in each quarter; sacrebleu's test: mostly < 0.5
        assert sum(p < 0.05 for p in values) <= 5, name


def test_reproducible_and_bad_input_refused(references):
    system = _damaged(references, 3)
    summarization = TASKS["summarization"]
    assert summarization.paired_test(system, references, references, samples=100) == \
        summarization.paired_test(system, references, references, samples=100)
    with pytest.raises(ValueError, match="119 hypotheses but 120 references"):
        TASKS["translation"].paired_test(references[:-1], references, references)


def test_a_summarization_folder_scored_before_chrf_joined_still_renders(tmp_path):
    # The committed DialogSumX folder was scored with ROUGE only; chrF joined the task later.
    import shutil
    from pathlib import Path

    from peft_neft.compare.report import write_report
    from peft_neft.compare.results import read_results
    from peft_neft.compare.significance import store_figures, stored_metric_names

    folder = shutil.copytree(Path(__file__).parents[1] / "docs/results/tuned-dialogsumx-en-fr", tmp_path / "folder")
    results = read_results(folder / "results.json")
    store_figures(results, folder)  # as `peft-neft report` does: the figures an older folder lacks
    assert stored_metric_names(results) == ("rouge1", "rouge2", "rougeL")
    table = write_report(results, folder)
    assert "rougeL" in table and "chrf" not in table
    assert "chrf" in get_task("summarization").score(["Le chat dort."], ["Le chat dort."])
