"""NeuronCalibrationCallback inside a user's own Trainer / SFTTrainer full fine-tune."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from peft_neft.selection import Budget, NeuronCalibrationCallback, NeuronSelection
from peft_neft.selection.calibration_callback import ORIGINAL_ROWS_FILE
from peft_neft.selection.cosine import cosine_rows

from conftest import make_tiny_llama, make_tiny_tokenizer

TARGETS = [f"model.layers.{i}.mlp.{m}" for i in (0, 1) for m in ("up_proj", "down_proj")]


def _rows_of(model):
    return {n: model.get_submodule(n).weight.detach().clone() for n in TARGETS}


def _counting(n=32):
    starts = torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    return [{"input_ids": list(range(s, s + 12)), "labels": list(range(s, s + 12))} for s in starts]


def _args(tmp_path, steps, save_steps=None):
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    return TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=1e-2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             logging_strategy="no", **saving)


class _RowsAt(TrainerCallback):
    """Keeps the target rows at one step; optionally stops training there (a run killed after its checkpoint)."""

    def __init__(self, step, stop=False):
        self.step, self.stop, self.rows = step, stop, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.rows = _rows_of(kwargs["model"])
            control.should_training_stop = self.stop


def test_scores_after_k_steps_of_a_users_trainer_and_writes_a_selection(tmp_path):
    model = make_tiny_llama()
    original = _rows_of(model)
    callback = NeuronCalibrationCallback(3, tmp_path / "sel.safetensors", budget=Budget(percent=2))
    # The user's own run goes on for 6 steps; the scores are taken at step 3.
    seen = {}

    class AtStep3(NeuronCalibrationCallback.__mro__[1]):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                seen.update(_rows_of(kwargs["model"]))

    trainer = Trainer(model=model, args=_args(tmp_path, 6), train_dataset=_counting(), callbacks=[callback, AtStep3()])
    trainer.train()
    assert trainer.state.global_step == 6  # not stopped: calibration rides along the user's training
    assert set(callback.scores.scores) == set(TARGETS)
    for name in TARGETS:
        expected = cosine_rows(original[name], seen[name])
        assert (expected < 1).any()
        torch.testing.assert_close(callback.scores.scores[name], expected, rtol=0, atol=0)
    saved = NeuronSelection.load(tmp_path / "sel.safetensors")
    assert saved.num_neurons == callback.selection.num_neurons > 0
    assert {n: r.tolist() for n, r in saved.rows.items()} == {n: r.tolist() for n, r in callback.selection.rows.items()}
    assert not callback._original  # the copy of the original rows is freed once scored


def test_only_the_target_rows_are_kept_in_the_chosen_dtype(tmp_path):
    model = make_tiny_llama()
    callback = NeuronCalibrationCallback(2, snapshot_dtype=torch.bfloat16, stop_training=True)
    kept = {}

    class Peek(NeuronCalibrationCallback.__mro__[1]):
        def on_step_begin(self, args, state, control, **kwargs):
            kept.update(callback._original)

    Trainer(model=model, args=_args(tmp_path, 10), train_dataset=_counting(), callbacks=[callback, Peek()]).train()
    assert set(kept) == set(TARGETS) and all(t.dtype == torch.bfloat16 for t in kept.values())
    assert sum(t.numel() for t in kept.values()) < sum(p.numel() for p in model.parameters()) / 2
    assert callback.scores is not None and callback.selection is None


def test_an_impossible_budget_fails_before_any_training(tmp_path):
    model = make_tiny_llama()
    before = _rows_of(model)
    callback = NeuronCalibrationCallback(2, tmp_path / "sel.safetensors", budget=Budget(num_params=10**9))
    with pytest.raises(ValueError, match="exceeds everything"):
        Trainer(model=model, args=_args(tmp_path, 4), train_dataset=_counting(), callbacks=[callback]).train()
    assert all(torch.equal(before[n], v) for n, v in _rows_of(model).items())
    with pytest.raises(ValueError, match="needs a budget"):
        NeuronCalibrationCallback(2, tmp_path / "x.safetensors")


def test_works_inside_trl_sft_trainer(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_llama()
    original = _rows_of(model)
    data = Dataset.from_list([{"text": " ".join(f"n{s + k}" for k in range(12))} for s in range(0, 96, 3)])
    callback = NeuronCalibrationCallback(2, tmp_path / "sel.safetensors", budget=Budget(num_neurons=10),
                                         stop_training=True)
    config = trl.SFTConfig(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=8, learning_rate=1e-2,
                           save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                           logging_strategy="no", bf16=False)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                             callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 2  # stop_training ends a calibration-only run at K
    for name in TARGETS:
        torch.testing.assert_close(callback.scores.scores[name], cosine_rows(original[name], _rows_of(model)[name]),
                                   rtol=0, atol=0)
    assert NeuronSelection.load(tmp_path / "sel.safetensors").num_neurons == 10


def test_k_beyond_the_run_and_a_fractional_k_are_refused_before_training(tmp_path):
    model = make_tiny_llama()
    before = _rows_of(model)
    with pytest.raises(ValueError, match="scores after step 8, but this run has only 4 optimizer steps"):
        Trainer(model=model, args=_args(tmp_path, 4), train_dataset=_counting(),
                callbacks=[NeuronCalibrationCallback(8)]).train()
    assert all(torch.equal(before[n], v) for n, v in _rows_of(model).items())
    with pytest.raises(TypeError, match="whole number of optimizer steps, got 2.5"):
        NeuronCalibrationCallback(2.5)


def test_an_unwritable_output_is_refused_at_train_start(tmp_path):
    model = make_tiny_llama()
    before = _rows_of(model)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out, message in ((blocker / "sel.safetensors", "cannot be written"), (tmp_path, "is a folder")):
        callback = NeuronCalibrationCallback(2, out, budget=Budget(num_neurons=4))
        with pytest.raises(ValueError, match=message):
            Trainer(model=model, args=_args(tmp_path / "run", 4), train_dataset=_counting(),
                    callbacks=[callback]).train()
    assert all(torch.equal(before[n], v) for n, v in _rows_of(model).items())


def test_a_run_ending_before_k_warns(tmp_path):
    callback = NeuronCalibrationCallback(4)
    trainer = Trainer(model=make_tiny_llama(), args=_args(tmp_path, 6), train_dataset=_counting(),
                      callbacks=[callback, _RowsAt(2, stop=True)])
    with pytest.warns(UserWarning, match="scored no neurons: training ended at step 2, before the calibration step 4"):
        trainer.train()
    assert callback.scores is None


def test_a_resume_before_k_scores_against_the_original_rows_kept_in_the_checkpoint(tmp_path):
    original = _rows_of(make_tiny_llama())
    first = NeuronCalibrationCallback(4)
    with pytest.warns(UserWarning, match="before the calibration step 4"):  # the "killed" first run
        Trainer(model=make_tiny_llama(), args=_args(tmp_path, 6, save_steps=2), train_dataset=_counting(),
                callbacks=[first, _RowsAt(2, stop=True)]).train()
    assert (tmp_path / "checkpoint-2" / ORIGINAL_ROWS_FILE).is_file()
    resumed, at_k = NeuronCalibrationCallback(4), _RowsAt(4)
    trainer = Trainer(model=make_tiny_llama(), args=_args(tmp_path, 6, save_steps=2), train_dataset=_counting(),
                      callbacks=[resumed, at_k])
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert trainer.state.global_step == 6
    for name in TARGETS:
        torch.testing.assert_close(resumed.scores.scores[name], cosine_rows(original[name], at_k.rows[name]),
                                   rtol=0, atol=0)
    # Without the kept rows the original weights are lost: the resume is refused before any step.
    (tmp_path / "checkpoint-2" / ORIGINAL_ROWS_FILE).unlink()
    with pytest.raises(ValueError, match="resumes at step 2, before the calibration step 4.*original weights are lost"):
        Trainer(model=make_tiny_llama(), args=_args(tmp_path, 6, save_steps=2), train_dataset=_counting(),
                callbacks=[NeuronCalibrationCallback(4)]).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_a_resume_after_k_warns_that_this_run_did_not_score(tmp_path):
    out = tmp_path / "sel.safetensors"
    first = NeuronCalibrationCallback(2, out, budget=Budget(num_neurons=4))
    Trainer(model=make_tiny_llama(), args=_args(tmp_path, 6, save_steps=4), train_dataset=_counting(),
            callbacks=[first, _RowsAt(4, stop=True)]).train()
    assert first.selection is not None and out.is_file()
    assert not (tmp_path / "checkpoint-4" / ORIGINAL_ROWS_FILE).exists()  # only checkpoints before K keep them
    resumed = NeuronCalibrationCallback(2, out, budget=Budget(num_neurons=4))
    trainer = Trainer(model=make_tiny_llama(), args=_args(tmp_path, 6, save_steps=4), train_dataset=_counting(),
                      callbacks=[resumed])
    with pytest.warns(UserWarning, match=f"resumed at step 4, after step 2.*its selection: {out}"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert resumed.scores is None and NeuronSelection.load(out).num_neurons == 4
