"""The Trainer-based engine: same batches for every method, best checkpoint restored, plateau stops, bf16."""

import logging
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from peft_neft import NeFTConfig
from peft_neft.training import Precision, TrainingSettings, train_model, validation_loss

from conftest import make_tiny_llama

SELECTION = {f"model.layers.{i}.mlp.{m}": list(range(0, 64, 2)) for i in range(2) for m in ("up_proj", "gate_proj")}
CPU = torch.device("cpu")


def _precision(dtype=torch.float32):
    return Precision(CPU, dtype, True)


def _rows(starts, step):
    """Sequences that count by ``step`` from each start; the first 4 tokens are prompt (no label)."""
    out = []
    for s in starts:
        ids = [int(s + step * i) % 128 for i in range(12)]
        out.append({"input_ids": ids, "attention_mask": [1] * 12, "labels": [-100] * 4 + ids[4:]})
    return out


def _collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    return {key: torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows])
            for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))}


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Trained to count up, validated on counting down: validation loss soon stops improving.
    return _rows(torch.randint(0, 128, (32,), generator=gen).tolist(), 1), \
        _rows(torch.randint(0, 128, (8,), generator=gen).tolist(), -1)


def _model(kind, dtype=torch.float32):
    model = make_tiny_llama().to(dtype)
    if kind == "lora":
        return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1))
    if kind == "neft":
        return get_peft_model(model, NeFTConfig(neurons=SELECTION))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _train(model, settings, lr=1e-1, seed=0, dtype=torch.float32):
    train, val = _data()
    return train_model(model, train, val, _collate, settings, learning_rate=lr, seed=seed, precision=_precision(dtype),
                       progress=False)


def _recorded_batches(kind, seed, batch_size=8, accumulation=1):
    model = _model(kind)
    seen = []
    model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: seen.append(args[0].tolist()) if module.training else None)
    _train(model, TrainingSettings(max_steps=6, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                                   eval_every=3, patience=None, eval_batch_size=8), seed=seed)
    return [row for batch in seen for row in batch]


def test_every_method_sees_the_same_batches_in_the_same_order():
    # 48 examples from 32: the second epoch's order must not depend on what LoRA's dropout drew from the RNG.
    full = _recorded_batches("full", seed=0)
    assert len(full) == 6 * 8
    assert _recorded_batches("lora", seed=0) == full
    assert _recorded_batches("neft", seed=0) == full
    assert _recorded_batches("neft", seed=0, batch_size=4, accumulation=2) == full  # accumulation: same examples
    assert _recorded_batches("neft", seed=1) != full


def test_the_best_validation_checkpoint_is_restored():
    model = _model("full")  # learns to count up fast, so the count-down validation loss soon rises
    stats = _train(model, TrainingSettings(max_steps=40, batch_size=8, eval_every=4, patience=None, eval_batch_size=8),
                   lr=1e-2)
    losses = [point["val_loss"] for point in stats["curve"]]
    assert stats["steps_run"] == 40 and stats["stop_reason"] == "max_steps"
    assert len(losses) == 10 and stats["best_val_loss"] == min(losses)
    assert stats["best_step"] < 40 and losses[-1] > min(losses) + 0.1  # the last weights are far from the best
    _, val = _data()
    settings = TrainingSettings(eval_batch_size=8)
    assert validation_loss(model, val, _collate, settings, precision=_precision()) == \
        pytest.approx(stats["best_val_loss"], abs=1e-6)


def test_validation_batches_group_similar_lengths_whatever_the_given_order():
    # Padding costs time: rows of 12, 5, 12, 5, ... tokens in batches of 2 should be padded to 5 and 12, not 12.
    model = _model("lora")
    rows = [{**row, **{k: v[:5] for k, v in row.items()}} if i % 2 else row for i, row in enumerate(_data()[1])]
    widths = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    settings = TrainingSettings(eval_batch_size=2)
    loss = validation_loss(model, rows, _collate, settings, precision=_precision())
    assert sorted(widths) == [5, 5, 12, 12]
    assert validation_loss(model, rows[::-1], _collate, settings, precision=_precision()) == loss


def test_training_stops_at_a_validation_plateau():
    model = _model("full")
    stats = _train(model, TrainingSettings(max_steps=40, batch_size=8, eval_every=4, patience=2, eval_batch_size=8),
                   lr=1e-2)
    assert stats["stop_reason"] == "plateau"
    assert stats["steps_run"] == stats["best_step"] + 2 * 4 < 40
    assert len(stats["curve"]) == stats["steps_run"] // 4


@pytest.mark.parametrize("losses, patience, reason", [
    ([2.0, 1.5, 1.6, 1.7], 2, "plateau"),  # patience runs out at the last step: the loss had flattened
    ([2.0, 1.5, 1.6, 1.7], 3, "max_steps"),
    ([2.0, 1.9, 1.8, 1.7], 2, "max_steps"),
])
def test_the_stop_reason_says_whether_validation_loss_flattened(losses, patience, reason):
    from transformers import TrainerControl, TrainerState

    from peft_neft.training import KeepBestCallback

    callback = KeepBestCallback([torch.nn.Parameter(torch.zeros(2))], patience)
    state, control = TrainerState(max_steps=40), TrainerControl()
    for step, loss in zip((10, 20, 30, 40), losses):
        state.global_step = step
        callback.on_evaluate(None, state, control, metrics={"eval_loss": loss})
    assert callback.stop_reason == reason


def test_patience_counts_from_the_last_improvement_worse_better_worse():
    """Worse, better, then worse: the count restarts at the improvement, and the best tensors are that step's."""
    from transformers import TrainerControl, TrainerState

    from peft_neft.training import KeepBestCallback

    param = torch.nn.Parameter(torch.zeros(2))
    callback = KeepBestCallback([param], patience=2)
    state, control = TrainerState(max_steps=60), TrainerControl()
    stopped_at = None
    for step, loss in zip((10, 20, 30, 40, 50, 60), (1.0, 1.1, 0.9, 1.0, 1.2, 0.5)):
        state.global_step = step
        param.data.fill_(step)
        callback.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        if control.should_training_stop:
            stopped_at = step
            break
    assert stopped_at == 50  # not 30: the improvement at step 30 reset the count after one worse evaluation
    assert callback.best_step == 30 and callback.best_loss == 0.9 and callback.best[0].tolist() == [30.0, 30.0]


def test_each_evaluation_logs_its_loss_and_the_best_so_far(caplog):
    """A run in the background (workers, --no-progress) shows a line per evaluation, not silence for an hour."""
    from transformers import TrainerControl, TrainerState

    from peft_neft.training import KeepBestCallback

    callback = KeepBestCallback([torch.nn.Parameter(torch.zeros(2))], patience=3)
    state, control = TrainerState(max_steps=40), TrainerControl()
    with caplog.at_level(logging.INFO, logger="peft_neft.training.trainer"):
        for step, loss in zip((10, 20), (2.0, 2.5)):
            state.global_step = step
            callback.on_evaluate(None, state, control, metrics={"eval_loss": loss})
    assert [r.getMessage() for r in caplog.records] == [
        "step 10 of 40: validation loss 2.0000 (best 2.0000 at step 10)",
        "step 20 of 40: validation loss 2.5000 (best 2.0000 at step 10; 1 of 3 evaluations without improvement)"]


def test_epochs_end_a_run_before_max_steps():
    settings = TrainingSettings(max_steps=100, epochs=1, batch_size=8, eval_every=2, patience=None)
    assert settings.steps_for(32) == 4
    stats = _train(_model("lora"), settings)
    assert stats["steps_run"] == 4 and stats["stop_reason"] == "max_steps"


def test_bf16_frozen_weights_train_float32_deltas_under_autocast():
    model = _model("neft", dtype=torch.bfloat16)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats = _train(model, TrainingSettings(max_steps=4, batch_size=8, eval_every=2, patience=None),
                   dtype=torch.bfloat16)
    deltas = {n: p for n, p in model.named_parameters() if "neft_delta" in n}
    assert deltas and all(p.dtype == torch.float32 and p.abs().sum() > 0 for p in deltas.values())
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.dtype == torch.bfloat16 and torch.equal(p, frozen[name]), name
    assert stats["steps_run"] == 4


def test_full_fine_tuning_keeps_float32_master_weights():
    model = _model("full", dtype=torch.bfloat16)
    _train(model, TrainingSettings(max_steps=2, batch_size=8, eval_every=2, patience=None), dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("bad", [{"max_steps": 0}, {"patience": 0}, {"epochs": 0}, {"warmup_ratio": 1.0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainingSettings(**bad)


def test_length_grouped_batches_are_fixed_by_the_seed_and_pad_less():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(6, 30, (64,), generator=gen).tolist()
    train = [{"input_ids": [(7 * i + k) % 128 for k in range(n)], "attention_mask": [1] * n,
              "labels": [-100] * 3 + [(7 * i + k) % 128 for k in range(3, n)]} for i, n in enumerate(lengths)]
    _, val = _data()

    def padded_tokens(kind, grouped):
        model, widths, rows = _model(kind), [], []

        def record(module, args, out):
            if module.training:
                widths.append(args[0].numel())
                rows.append(args[0].tolist())

        model.get_input_embeddings().register_forward_hook(record)
        train_model(model, train, val, _collate, TrainingSettings(max_steps=8, batch_size=8, eval_every=8, patience=None,
                                                                  group_by_length=grouped),
                    learning_rate=1e-2, seed=0, precision=_precision(), progress=False)
        return sum(widths), rows

    grouped, rows = padded_tokens("neft", True)
    assert padded_tokens("lora", True)[1] == rows
    assert grouped < 0.9 * padded_tokens("neft", False)[0]  # 64 rows: megabatches of 16 (transformers' rule)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_training_whose_loss_becomes_non_finite_stops_as_diverged(kind, caplog):
    settings = TrainingSettings(max_steps=12, batch_size=8, eval_every=2, patience=None, eval_batch_size=8)
    with caplog.at_level("WARNING", logger="peft_neft"):
        stats = _train(_model(kind), settings, lr=1e30)
    assert stats["stop_reason"] == "diverged" and stats["diverged_step"] == stats["steps_run"] < 12
    assert not math.isfinite(stats["curve"][-1]["val_loss"]) and stats["curve"][-1]["step"] == stats["diverged_step"]
    assert f"step {stats['diverged_step']} of 12: validation loss" in caplog.text and "diverged" in caplog.text
    assert _train(_model(kind), settings, lr=1e-2)["diverged_step"] is None  # a sane rate does not
