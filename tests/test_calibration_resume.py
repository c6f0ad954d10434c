"""Calibrations that checkpoint and resume: an interrupted run, rerun with the same folder, gives the scores of an
uninterrupted one, to the bit; the state of another run is refused."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import make_tiny_llama
from peft_neft.selection import calibrate, get_scorer
from peft_neft.selection.calibration_callback import ORIGINAL_ROWS_FILE
from peft_neft.selection.calibration_state import LOSSES_FILE, RUN_FILE, STATE_FILE, resumable_checkpoint
from test_scorers import COLLATE, toy_data

TARGETS = ["up_proj", "down_proj"]


class Interrupted(Exception):
    """Stands for a kill."""


def _interrupt_at_forward(model, call):
    """Make the first decoder layer raise on its ``call``-th forward pass (1-based); count the passes."""
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) == call:
            raise Interrupted

    return model.model.layers[0].register_forward_pre_hook(hook), calls


def _same_scores(a, b):
    assert sorted(a.scores) == sorted(b.scores)
    assert all(torch.equal(a.scores[n], b.scores[n]) for n in a.scores)


@pytest.mark.parametrize("name", ["taylor", "gradient", "activation"])
def test_an_interrupted_batch_scorer_resumes_to_the_uninterrupted_scores(name, tmp_path):
    kwargs = dict(collate_fn=COLLATE, steps=5, batch_size=3, lr=0.0, seed=1, target_modules=TARGETS)
    expected = get_scorer(name).score(make_tiny_llama(), toy_data(), **kwargs)
    assert not list(tmp_path.iterdir())  # no checkpoint_dir: nothing written

    model = make_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle, calls = _interrupt_at_forward(model, 4)  # batches 1-2 saved, 3 run and lost, killed in 4
    with pytest.raises(Interrupted):
        get_scorer(name).score(model, toy_data(), checkpoint_dir=tmp_path, save_every=2, **kwargs)
    handle.remove()
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    handle, calls = _interrupt_at_forward(model, 0)
    resumed = get_scorer(name).score(model, toy_data(), checkpoint_dir=tmp_path, save_every=2, **kwargs)
    handle.remove()
    assert len(calls) == 3  # batches 3-5 only: the two saved ones are skipped without running the model
    _same_scores(resumed, expected)
    assert resumed.metadata == expected.metadata  # losses, token count included
    with pytest.raises(ValueError, match=f"{STATE_FILE}.*differs in batch_size.*delete it"):
        get_scorer(name).score(model, toy_data(), checkpoint_dir=tmp_path, **{**kwargs, "batch_size": 2})


@pytest.mark.parametrize("method", ["cosine", "movement"])
def test_an_interrupted_fine_tune_resumes_from_trainer_s_checkpoint_to_the_uninterrupted_scores(method, tmp_path):
    kwargs = dict(collate_fn=COLLATE, steps=5, batch_size=3, lr=1e-3, seed=1, target_modules=TARGETS, progress=False,
                  method=method)
    expected = calibrate(make_tiny_llama(), toy_data(), **kwargs)

    model = make_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def kill(step, loss):  # after each optimizer step, before Trainer saves that step's checkpoint
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        calibrate(model, toy_data(), checkpoint_dir=tmp_path, save_every=2, callback=kill, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_FILE, "checkpoint-2"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    (tmp_path / "checkpoint-4").mkdir()  # what a kill while Trainer saved step 4 leaves: no losses file
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"")
    # it is removed (Trainer's rotation would keep it over newer checkpoints), and the complete one is resumed
    assert resumable_checkpoint(tmp_path) == tmp_path / "checkpoint-2" and not (tmp_path / "checkpoint-4").exists()

    steps = []
    resumed = calibrate(model, toy_data(), checkpoint_dir=tmp_path, save_every=2,
                        callback=lambda step, loss: steps.append(step), **kwargs)
    assert steps == [3, 4, 5]
    _same_scores(resumed, expected)
    assert resumed.metadata == expected.metadata  # the losses of steps 1-2 came back from the checkpoint
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # only the newest checkpoint is kept, none at step K; the rows came from the model, so none are written
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_FILE, "checkpoint-4"]
    checkpoint = tmp_path / "checkpoint-4"
    assert (checkpoint / "optimizer.pt").is_file() and not (checkpoint / ORIGINAL_ROWS_FILE).exists()
    assert json.loads((checkpoint / LOSSES_FILE).read_text()) == expected.metadata["losses"][:4]
    with pytest.raises(ValueError, match=f"{RUN_FILE}.*differs in lr.*delete it"):
        calibrate(model, toy_data(), checkpoint_dir=tmp_path, **{**kwargs, "lr": 1e-4})


def test_save_every_must_be_a_positive_whole_number(tmp_path):
    for score in ("cosine", "taylor"):
        with pytest.raises(ValueError, match="save_every must be"):
            get_scorer(score).score(make_tiny_llama(), toy_data(), collate_fn=COLLATE, steps=2, batch_size=4, lr=1e-3,
                                    seed=0, target_modules=TARGETS, checkpoint_dir=tmp_path, save_every=0)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _loader(tokenizer, kill_at: int | None = None):
    """``compare``'s ``load_model``: tiny Llamas whose first decoder layer raises once, on the ``kill_at``-th forward
    pass counted over every model loaded (the calibration's come first: the comparison has one NeFT method)."""
    forwards = []

    def load():
        model = make_tiny_llama(vocab=len(tokenizer))
        if kill_at is not None:
            def hook(module, args):
                forwards.append(1)
                if len(forwards) == kill_at:
                    raise Interrupted

            model.model.layers[0].register_forward_pre_hook(hook)
        return model

    return load


@pytest.mark.slow
@pytest.mark.parametrize("method", ["neft[score=taylor]:match-lora:2", "neft:match-lora:2"])
def test_a_killed_compare_resumes_its_running_calibration(method, tokenizer, tmp_path, caplog):
    from peft_neft.compare import CompareConfig, compare, parse_method
    from peft_neft.selection.neuron_scores import load_scores
    from peft_neft.tasks import django_translation_pairs

    pairs = django_translation_pairs("fr")
    data = {"train": pairs["train"].select(range(16)), "validation": pairs["validation"].select(range(4)),
            "test": pairs["test"].select(range(2))}
    config = CompareConfig(max_steps=1, eval_every=1, batch_size=4, calibration_steps=12, max_new_tokens=1,
                           dtype="float32")  # a calibration of 12 steps or batches: saved after 10
    key = parse_method(method).calibration_key(0)

    def run(out, kill_at=None):
        return compare(_loader(tokenizer, kill_at), tokenizer, data, [method], [0], tmp_path / out, config,
                       progress=False)

    run("whole")
    with pytest.raises(Interrupted):
        run("killed", kill_at=11)
    partial = tmp_path / "killed" / "checkpoints" / f"{key}.partial"
    assert partial.is_dir() and not (tmp_path / "killed" / "checkpoints" / f"{key}.safetensors").exists()
    with caplog.at_level(logging.INFO, logger="peft_neft"):
        run("killed")
    assert f"calibration: resumed from {partial}" in caplog.text and "after 10 of 12" in caplog.text
    expected, whole_info = load_scores(tmp_path / "whole" / "calibrations" / f"{key}.safetensors")
    resumed, resumed_info = load_scores(tmp_path / "killed" / "calibrations" / f"{key}.safetensors")
    _same_scores(resumed, expected)
    assert "resumed" not in whole_info and resumed_info["resumed"] is True  # its seconds are the last call's only
    assert resumed.metadata == expected.metadata
    assert not (tmp_path / "killed" / "checkpoints").exists()  # the state went with the cached scores
