"""``peft-neft select --scores``: a selection from a calibration a comparison kept, at any budget and spread."""

from __future__ import annotations

import pytest

from conftest import make_tiny_llama
from peft_neft.cli import main
from peft_neft.selection.neuron_scores import save_scores
from peft_neft.selection import Budget, NeuronSelection, select_neurons
from peft_neft.selection.cosine import score_models


@pytest.fixture()
def kept(tmp_path):
    """A tiny model's folder and a calibration of it, stored as ``compare`` keeps one."""
    model, tuned = make_tiny_llama(), make_tiny_llama(seed=1)
    model.save_pretrained(tmp_path / "tiny")
    scores = score_models(model, tuned, ("up_proj", "down_proj"))
    save_scores(tmp_path / "calibration@seed0.safetensors", scores, {"score": "cosine"})
    return model, scores, tmp_path


@pytest.mark.parametrize("spread", ["global", "per-module"])
def test_select_from_kept_scores_matches_the_library_at_a_lora_budget(kept, spread):
    model, scores, folder = kept
    out = folder / "sel.safetensors"
    assert main(["select", "--scores", str(folder / "calibration@seed0.safetensors"), "--model", str(folder / "tiny"),
                 "--lora-rank", "2", "--spread", spread, "--out", str(out), "--no-progress"]) == 0
    expected = select_neurons(scores, budget=Budget.from_lora(model, 2), spread=spread)
    got = NeuronSelection.load(out)
    assert {n: r.tolist() for n, r in got.rows.items()} == {n: r.tolist() for n, r in expected.rows.items()}


def test_a_percent_budget_needs_no_model(kept):
    _, scores, folder = kept
    out = folder / "sel.safetensors"
    assert main(["select", "--scores", str(folder / "calibration@seed0.safetensors"), "--percent", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert NeuronSelection.load(out).num_params == select_neurons(scores, budget=Budget(percent=1)).num_params


@pytest.mark.parametrize(("extra", "message"), [
    ([], "give --scores FILE, or --base and --finetuned"),
    (["--scores", "s.safetensors", "--base", "a", "--finetuned", "b"], "--scores or --base/--finetuned, not both"),
    (["--base", "a"], "give --scores FILE, or --base and --finetuned"),
    (["--scores", "missing.safetensors"], "missing.safetensors"),
])
def test_select_names_its_inputs_or_says_which_are_missing(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["select", *extra, "--percent", "1", "--out", "sel.safetensors"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sel.safetensors").exists()
