"""A run killed between evaluations and resumed ends bit-identical to an uninterrupted one."""

from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from peft_neft.training import TrainingSettings, train_model
from peft_neft.training.checkpoints import FINISHED, KEEP_BEST
from peft_neft.training.trainer import trainable_parameters

from test_training import _collate, _data, _model, _precision

# 32 rows in batches of 8: 4 steps an epoch, so the kill at step 7 and the resume from step 6 fall in the
# second epoch, and the run ends in the third.
SETTINGS = TrainingSettings(max_steps=11, batch_size=8, eval_every=3, patience=None, warmup_ratio=0.2)


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Killed


def _run(kind, folder, callbacks=()):
    torch.manual_seed(0)
    model = _model(kind)
    train, val = _data()
    stats = train_model(model, train, val, _collate, SETTINGS, learning_rate=3e-2, seed=1, precision=_precision(),
                        checkpoint_dir=folder, progress=False, callbacks=callbacks)
    return [p.detach().clone() for p in trainable_parameters(model)], stats


class _Batches(TrainerCallback):
    """The first token of every training row, per optimizer step (the data order)."""

    def __init__(self):
        self.steps = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, inputs, output):
            if module.training:
                self.steps[state.global_step + 1] = inputs[0][:, 0].tolist()

        model.get_input_embeddings().register_forward_hook(record)


def _same(a, b):
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["lora", "neft", "full"])
def test_a_killed_run_resumes_from_its_last_checkpoint_bit_identical(kind, tmp_path):
    order = _Batches()
    expected, expected_stats = _run(kind, None, [order])
    epochs = [sorted(sum((order.steps[s] for s in range(e * 4 + 1, e * 4 + 5)), [])) for e in range(2)]
    assert epochs[0] == epochs[1] and order.steps[1] != order.steps[5]  # each epoch: all rows, in a new order
    folder = tmp_path / "run"
    with pytest.raises(_Killed):
        _run(kind, folder, [_KillAt(7)])
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3", "checkpoint-6"]
    assert all((folder / name / KEEP_BEST).is_file() for name in ("checkpoint-3", "checkpoint-6"))
    resumed_steps = []

    class _Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            resumed_steps.append(state.global_step)

    resumed_order = _Batches()
    got, stats = _run(kind, folder, [_Steps(), resumed_order])
    assert resumed_steps == list(range(7, 12))  # from the checkpoint at step 6, not from step 0
    assert resumed_order.steps == {s: order.steps[s] for s in range(7, 12)}  # the batches it would have seen
    _same(got, expected)
    timing = ("train_seconds", "time_per_step_s")
    assert {k: v for k, v in stats.items() if k not in timing} == \
        {k: v for k, v in expected_stats.items() if k not in timing}
    assert [c["step"] for c in stats["curve"]] == [3, 6, 9, 11]
    # Finished: only the result is kept, and the same call loads it instead of training again.
    assert [p.name for p in folder.iterdir()] == [FINISHED]
    again, again_stats = _run(kind, folder, [_KillAt(1)])
    _same(again, expected)
    assert again_stats == stats


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("cut", ["missing", "truncated", "empty"])
def test_a_checkpoint_cut_short_is_not_resumed_from(tmp_path, cut):
    folder = tmp_path / "run"
    with pytest.raises(_Killed):
        _run("neft", folder, [_KillAt(7)])
    keep_best = folder / "checkpoint-6" / KEEP_BEST  # as if killed while checkpoint-6 was written
    {"missing": lambda p: p.unlink(), "truncated": _truncate, "empty": lambda p: p.write_bytes(b"")}[cut](keep_best)
    steps = []

    class _Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    got, _ = _run("neft", folder, [_Steps()])
    assert steps[0] == 4  # resumed from checkpoint-3
    _same(got, _run("neft", None)[0])


class _KilledMidWrite(BaseException):
    pass


@pytest.mark.parametrize("before", [False, True])
def test_keep_best_killed_mid_write_leaves_the_previous_file_or_none(tmp_path, monkeypatch, before):
    """A kill while keep_best is written leaves the old complete file (or none), never a truncated one under its
    name, which would mark the checkpoint complete."""
    import safetensors.torch

    from peft_neft.training import checkpoints

    path = tmp_path / "checkpoint-3" / KEEP_BEST
    path.parent.mkdir()
    if before:
        checkpoints.save_state(path, [torch.ones(4)], {"best_loss": 1.0})
    old = path.read_bytes() if before else None

    def killed_mid_write(tensors, filename, metadata=None):
        safetensors.torch.save_file(tensors, filename, metadata=metadata)
        _truncate(Path(filename))
        raise _KilledMidWrite

    monkeypatch.setattr(checkpoints, "save_file", killed_mid_write)
    with pytest.raises(_KilledMidWrite):
        checkpoints.save_state(path, [torch.zeros(4)], {"best_loss": 0.5})
    assert (path.read_bytes() if path.exists() else None) == old
    assert checkpoints.resumable_checkpoint(tmp_path) == (path.parent if before else None)
