"""NeuronCalibrationCallback inside a user's own Trainer / SFTTrainer full fine-tune."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

from peft_neft.selection import NeuronSelection
from peft_neft.selection.cosine import cosine_rows
from peft_neft.selection import NeuronCalibrationCallback

from conftest import make_tiny_llama

TARGETS = [f"model.layers.{i}.mlp.{m}" for i in (0, 1) for m in ("up_proj", "down_proj")]


def _rows_of(model):
    return {n: model.get_submodule(n).weight.detach().clone() for n in TARGETS}


def _counting(n=32):
    starts = torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    return [{"input_ids": list(range(s, s + 12)), "labels": list(range(s, s + 12))} for s in starts]


def _args(tmp_path, steps):
    return TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True, logging_strategy="no")


def test_scores_after_k_steps_of_a_users_trainer_and_writes_a_selection(tmp_path):
    model = make_tiny_llama()
    original = _rows_of(model)
    callback = NeuronCalibrationCallback(3, tmp_path / "sel.safetensors", budget={"percent": 2})
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
    callback = NeuronCalibrationCallback(2, tmp_path / "sel.safetensors", budget={"percent": 150})
    with pytest.raises(ValueError, match="percent"):
        Trainer(model=model, args=_args(tmp_path, 4), train_dataset=_counting(), callbacks=[callback]).train()
    assert all(torch.equal(before[n], v) for n, v in _rows_of(model).items())
    with pytest.raises(ValueError, match="needs a budget"):
        NeuronCalibrationCallback(2, tmp_path / "x.safetensors")


def test_works_inside_trl_sft_trainer(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"n{i}": i + 3 for i in range(125)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    model = make_tiny_llama()
    original = _rows_of(model)
    data = Dataset.from_list([{"text": " ".join(f"n{s + k}" for k in range(12))} for s in range(0, 96, 3)])
    callback = NeuronCalibrationCallback(2, tmp_path / "sel.safetensors", budget={"num_neurons": 10},
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
