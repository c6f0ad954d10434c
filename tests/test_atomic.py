"""Atomic writes: nothing a user had is lost, at any instant of a save, and crashed saves are cleaned up."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

import peft_neft
from peft_neft import NeFTConfig
from peft_neft import atomic
from peft_neft.adapters import saving
from peft_neft.atomic import atomic_dir, atomic_path
from peft_neft.adapters.saving import save_pretrained_atomically

from conftest import make_tiny_llama

A = {"model.layers.0.mlp.up_proj": [1, 9, 33], "model.layers.1.self_attn.k_proj": [0]}
B = {"model.layers.1.mlp.down_proj": [4, 7]}


def _two_adapter_model(seed=0):
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=2 * seed + 1))
    model.add_adapter("other", NeFTConfig(neurons=B, init_weights=False, init_seed=2 * seed + 2))
    return model


def _deltas(model, adapter):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f"neft_delta.{adapter}" in n}


def _load(path, adapter="default"):
    """The deltas of ``adapter`` as loaded from ``path`` (``other`` lives in ``path/other``)."""
    model = PeftModel.from_pretrained(make_tiny_llama(), path)
    if adapter != "default":
        model.load_adapter(path / adapter, adapter_name=adapter)
    return _deltas(model, adapter)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _leftovers(folder: Path, name: str):
    """Hidden temporaries beside ``folder/name`` and, for a saved adapter, inside it."""
    beside = [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")]
    inside = [p.name for p in (folder / name).glob(".neft-save.*")] if (folder / name).is_dir() else []
    return sorted(beside + inside)


def test_atomic_save_keeps_every_other_file_in_the_folder(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "tokenizer.json").write_text('{"kept": true}')
    (target / "training_args.json").write_text("{}")
    (target / "sub").mkdir()
    (target / "sub" / "notes.txt").write_text("mine")
    model = _two_adapter_model()
    save_pretrained_atomically(model, target, selected_adapters=["default"])
    assert (target / "tokenizer.json").read_text() == '{"kept": true}'
    assert (target / "training_args.json").read_text() == "{}"
    assert (target / "sub" / "notes.txt").read_text() == "mine"
    assert _same(_load(target), _deltas(model, "default"))
    assert _leftovers(tmp_path, "adapter") == []


def test_two_atomic_saves_of_different_adapters_keep_both_like_plain_peft(tmp_path):
    model = _two_adapter_model()
    for save, folder in ((model.save_pretrained, tmp_path / "plain"), (None, tmp_path / "atomic")):
        for adapter in ("default", "other"):
            if save is None:
                save_pretrained_atomically(model, folder, selected_adapters=[adapter])
            else:
                save(folder, selected_adapters=[adapter])
    files = lambda folder: sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))  # noqa: E731
    assert files(tmp_path / "atomic") == files(tmp_path / "plain")
    assert _same(_load(tmp_path / "atomic"), _deltas(model, "default"))
    assert _same(_load(tmp_path / "atomic", "other"), _deltas(model, "other"))


def test_atomic_save_keeps_what_the_user_wrote_in_an_existing_model_card(tmp_path):
    model = _two_adapter_model()
    (tmp_path / "atomic").mkdir()
    (tmp_path / "atomic" / "README.md").write_text("# My adapter\n\nNotes the user wrote.\n")
    save_pretrained_atomically(model, tmp_path / "atomic")
    text = (tmp_path / "atomic" / "README.md").read_text()
    assert "Notes the user wrote." in text and "# My adapter" in text
    assert "# NeFT adapter" in text and "## Selection of adapter `other`" in text  # one card for both adapters


def test_each_adapter_config_is_renamed_into_place_after_its_weights(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    files = _files_written_by_a_save(tmp_path)
    real_replace = os.replace
    renamed = []

    def record(src, dst):
        if ".neft-save." not in str(dst):  # a move into the target, not a write inside the save's temporary
            renamed.append(Path(dst).relative_to(target).as_posix())
        real_replace(src, dst)

    monkeypatch.setattr(saving.os, "replace", record)
    save_pretrained_atomically(_two_adapter_model(), target)
    for folder in ("", "other/"):
        assert renamed.index(f"{folder}adapter_model.safetensors") < renamed.index(f"{folder}adapter_config.json")
    assert renamed[-2:] == ["adapter_config.json", "other/adapter_config.json"]  # configs after every other file
    assert len(renamed) == files


def _files_written_by_a_save(tmp_path):
    """How many files one save of both adapters moves into place."""
    probe = tmp_path / "probe"
    save_pretrained_atomically(_two_adapter_model(), probe)
    return sum(1 for p in probe.rglob("*") if p.is_file())


@pytest.mark.parametrize("step", range(6))
def test_a_crash_at_any_step_of_the_swap_leaves_each_adapter_old_or_new_and_the_next_save_cleans_up(
    tmp_path, monkeypatch, step
):
    # 2 x (weights, config, model card), the second adapter in its subfolder: one step per rename
    assert _files_written_by_a_save(tmp_path) == 6
    target = tmp_path / "adapter"
    old = _two_adapter_model(seed=1)
    save_pretrained_atomically(old, target)
    (target / "tokenizer.json").write_text("{}")
    new = _two_adapter_model(seed=2)

    real_replace = os.replace
    calls = []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == step + 1:
            raise OSError("crash injected")
        real_replace(src, dst)

    monkeypatch.setattr(saving.os, "replace", replace_then_crash)
    with pytest.raises(OSError, match="crash injected"):
        save_pretrained_atomically(new, target)
    monkeypatch.undo()

    # Every instant: the folder is there, each adapter loads and is entirely the old or entirely the new one.
    assert (target / "tokenizer.json").exists()
    for adapter in ("default", "other"):
        loaded = _load(target, adapter)
        assert _same(loaded, _deltas(old, adapter)) or _same(loaded, _deltas(new, adapter))

    save_pretrained_atomically(new, target)
    for adapter in ("default", "other"):
        assert _same(_load(target, adapter), _deltas(new, adapter))
    assert _leftovers(tmp_path, "adapter") == []
    assert (target / "tokenizer.json").exists()


def test_a_failing_writer_changes_nothing_and_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    old = _two_adapter_model(seed=1)
    save_pretrained_atomically(old, target)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    real_save = PeftModel.save_pretrained

    def save_half_then_fail(self, save_directory, **kwargs):
        real_save(self, save_directory, **kwargs)
        weights = Path(save_directory) / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(PeftModel, "save_pretrained", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomically(_two_adapter_model(seed=2), target)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert _leftovers(tmp_path, "adapter") == []


def test_atomic_save_recovers_an_adapter_a_killed_folder_swap_hid_and_cleans_up(tmp_path):
    # What a SIGKILL between the two renames of a whole-folder swap leaves: the old folder moved aside.
    model = _two_adapter_model()
    hidden = tmp_path / ".adapter.x1.old" / "contents"
    model.save_pretrained(hidden, selected_adapters=["default"])
    (tmp_path / ".adapter.x2.tmp").mkdir()
    save_pretrained_atomically(model, tmp_path / "adapter", selected_adapters=["other"])
    assert _same(_load(tmp_path / "adapter"), _deltas(model, "default"))
    assert _same(_load(tmp_path / "adapter", "other"), _deltas(model, "other"))
    assert _leftovers(tmp_path, "adapter") == []


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch
    from peft import PeftModel, get_peft_model
    from peft_neft import NeFTConfig
    from peft_neft.adapters import saving
    from conftest import make_tiny_llama

    target, phase = Path(sys.argv[1]), sys.argv[2]
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons={{"model.layers.0.mlp.up_proj": [1, 9, 33]}}))
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(2.0)

    def stall():
        (target.parent / "stalled").write_text("")
        time.sleep(600)

    if phase == "write":  # killed while the weights file is half-written
        real_save = PeftModel.save_pretrained
        def save_and_stall(self, save_directory, **kwargs):
            real_save(self, save_directory, **kwargs)
            weights = Path(save_directory) / "adapter_model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
            stall()
        PeftModel.save_pretrained = save_and_stall
    else:  # killed between two renames of the swap: the weights are in place, the config is not yet
        real_replace = os.replace
        def replace_and_stall(src, dst):
            real_replace(src, dst)
            if Path(dst) == target / "adapter_model.safetensors":
                stall()
        saving.os.replace = replace_and_stall
    saving.save_pretrained_atomically(model, target)
    """
)


@pytest.mark.parametrize("phase", ["write", "swap"])
def test_sigkill_mid_save_keeps_a_loadable_adapter_and_the_next_save_cleans_up(tmp_path, phase):
    target = tmp_path / "adapter"
    old = get_peft_model(make_tiny_llama(), NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 9, 33]}))
    with torch.no_grad():
        next(p for p in old.parameters() if p.requires_grad).fill_(1.0)
    save_pretrained_atomically(old, target)
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, str(script), str(target), phase], env=env)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "stalled").exists():
            assert child.poll() is None, "the child exited before it reached the stall point"
            assert time.monotonic() < deadline, "the child never reached the stall point"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL

    assert _leftovers(tmp_path, "adapter")  # the killed save left its temporary files behind
    loaded = _load(target)
    assert len(loaded) == 1
    value = next(iter(loaded.values()))
    # Killed mid-write: the old adapter. Killed after the weights' rename: the new one. Never a mix.
    assert torch.equal(value, torch.full_like(value, 2.0 if phase == "swap" else 1.0))

    save_pretrained_atomically(old, target)
    assert _leftovers(tmp_path, "adapter") == []
    assert torch.equal(next(iter(_load(target).values())), torch.ones_like(value))


# ---- atomic_path: results.json, selections, outputs ----


def test_atomic_path_never_moves_a_half_written_file_over_the_good_one(tmp_path):
    target = tmp_path / "results.json"
    target.write_text(json.dumps({"runs": [1, 2, 3]}))
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as handle:
                handle.write('{"runs": [1, 2')  # half a file, then the process is interrupted
                handle.flush()
                raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"runs": [1, 2, 3]}
    assert _leftovers(tmp_path, "results.json") == []


def test_atomic_path_does_not_create_a_file_that_was_never_completed(tmp_path):
    target = tmp_path / "sel.safetensors"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("writer failed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_cleans_up_temporary_files_of_a_killed_write(tmp_path):
    target = tmp_path / "outputs.jsonl"
    stale = tmp_path / ".outputs.jsonl.abc123.tmp"
    stale.write_text("half")
    unrelated = tmp_path / ".other.jsonl.abc123.tmp"
    unrelated.write_text("someone else's")
    with atomic_path(target) as tmp:
        tmp.write_text("done\n")
    assert target.read_text() == "done\n"
    assert not stale.exists() and unrelated.exists()


def test_atomic_dir_restores_a_folder_hidden_by_a_crash_between_its_renames(tmp_path, monkeypatch):
    target = tmp_path / "report"
    with atomic_dir(target) as tmp:
        (tmp / "report.md").write_text("old")
    real_replace = os.replace
    calls = []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("crash injected")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="crash injected"):
        with atomic_dir(target) as tmp:
            (tmp / "report.md").write_text("new")
    monkeypatch.undo()
    assert (target / "report.md").read_text() == "old"
    assert _leftovers(tmp_path, "report") == []


def test_atomic_dir_recovers_the_old_folder_after_a_kill_between_its_renames_and_cleans_up(tmp_path):
    target = tmp_path / "report"
    # What a SIGKILL between the two renames leaves: the old folder moved aside, a complete new one beside it.
    (tmp_path / ".report.x1.old" / "contents").mkdir(parents=True)
    (tmp_path / ".report.x1.old" / "contents" / "report.md").write_text("old")
    (tmp_path / ".report.x2.tmp").mkdir()
    with atomic_dir(target) as tmp:
        assert (target / "report.md").read_text() == "old"  # restored before the new write starts
        (tmp / "report.md").write_text("new")
    assert (target / "report.md").read_text() == "new"
    assert _leftovers(tmp_path, "report") == []


def test_public_name_is_the_module_function():
    assert peft_neft.save_pretrained_atomically is save_pretrained_atomically
