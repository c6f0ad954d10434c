"""Every user-facing CLI failure is one `peft-neft CMD: error: ...` line naming the input; tracebacks only on request."""

from __future__ import annotations

import json

import pytest

from conftest import make_tiny_llama
from peft_neft.cli import main


@pytest.fixture
def checkpoints(tmp_path):
    make_tiny_llama().save_pretrained(tmp_path / "base")
    make_tiny_llama(seed=1).save_pretrained(tmp_path / "tuned")
    return tmp_path / "base", tmp_path / "tuned"


def _select(base, tuned, out, *extra):
    return main(["select", "--base", str(base), "--finetuned", str(tuned), "--num-neurons", "4", "--out", str(out), *extra])


def _error_line(capsys, command):
    """The one error line, after at most the log of the choices made before the failure (the precision)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[peft_neft.training.precision]")]
    assert len(lines) == 1 and lines[0].startswith(f"peft-neft {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_select_out_pointing_at_a_folder(checkpoints, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    capsys.readouterr()
    assert _select(*checkpoints, tmp_path / "folder") == 2
    line = _error_line(capsys, "select")
    assert "--out" in line and "is a folder" in line and "folder/selection.safetensors" in line
    assert list((tmp_path / "folder").iterdir()) == []


def test_truncated_checkpoint(checkpoints, tmp_path, capsys):
    base, tuned = checkpoints
    weights = tuned / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert _select(base, tuned, tmp_path / "sel.safetensors") == 1
    line = _error_line(capsys, "select")
    assert f"{weights}" in line and "truncated or corrupt" in line


def test_corrupt_config_json(checkpoints, tmp_path, capsys):
    base, tuned = checkpoints
    (base / "config.json").write_text('{"model_type": "llama", ')
    capsys.readouterr()
    assert _select(base, tuned, tmp_path / "sel.safetensors") == 1
    line = _error_line(capsys, "select")
    assert f"{base / 'config.json'}" in line and "save_pretrained" in line


def test_model_path_that_does_not_exist_is_not_looked_up_on_the_hub(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    missing = tmp_path / "no-such-model"
    assert main(["calibrate", "--model", str(missing), "--data", str(data), "--num-neurons", "4",
                 "--out", str(tmp_path / "sel.safetensors")]) == 1
    line = _error_line(capsys, "calibrate")
    assert f"{missing}" in line and "does not exist" in line


def test_unexpected_errors_are_one_line_and_the_traceback_is_available(checkpoints, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something\nwent wrong")

    monkeypatch.setattr("peft_neft.selection.score_checkpoints", broken)
    capsys.readouterr()
    assert _select(*checkpoints, tmp_path / "sel.safetensors") == 1
    line = _error_line(capsys, "select")
    assert "RuntimeError: something went wrong" in line and "PEFT_NEFT_DEBUG=1" in line
    monkeypatch.setenv("PEFT_NEFT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="went wrong"):
        _select(*checkpoints, tmp_path / "sel.safetensors")


def test_compare_reads_each_split_of_a_saved_dataset_dict_by_its_name(tmp_path, capsys):
    from datasets import Dataset, DatasetDict

    table = Dataset.from_dict({"source": ["one", "two"], "target": ["un", "deux"]})
    DatasetDict({"train": table, "validation": table}).save_to_disk(tmp_path / "data")
    capsys.readouterr()
    data = str(tmp_path / "data")
    assert main(["compare", "--train", data, "--validation", data, "--eval", data, "--methods", "base",
                 "--out", str(tmp_path / "out")]) == 1
    line = _error_line(capsys, "compare")
    assert "holds the splits ['train', 'validation'], not 'test'" in line
