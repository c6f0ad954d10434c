"""The one output rule, per command that writes: never into, over or around what it reads; never over a folder
it did not make without --overwrite; refused in one line (exit 2) before any model loads, with nothing touched."""

import json

import pytest
from peft import get_peft_model

from peft_neft import NeFTConfig
from peft_neft.cli import main
from peft_neft.outputs import check_output

from conftest import make_tiny_llama


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A project folder: a base and a fine-tuned model, data, an adapter, a results folder and a user's files."""
    root = tmp_path / "work"
    root.mkdir()
    make_tiny_llama().save_pretrained(root / "base")
    make_tiny_llama(seed=1).save_pretrained(root / "tuned")
    (root / "pairs.jsonl").write_text(json.dumps({"source": "n1 n2", "target": "n3"}) + "\n")
    (root / "train.en").write_text("n1\n")
    (root / "train.fr").write_text("n2\n")
    neft = get_peft_model(make_tiny_llama(), NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 2]}, init_weights=False, init_seed=1))
    neft.save_pretrained(root / "adapter")
    (root / "results").mkdir()
    (root / "results" / "results.json").write_text("{}")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep me")
    (root / "file.txt").write_text("a file")
    (root / "empty").mkdir()
    monkeypatch.chdir(root)
    return root


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


SELECTION = ["--percent", "1"]
CALIBRATE = ["calibrate", "--model", "base", "--data", "pairs.jsonl", *SELECTION, "--out"]
SELECT = ["select", "--base", "base", "--finetuned", "tuned", *SELECTION, "--out"]
ANALYZE = ["analyze", "--model-a", "base", "--model-b", "tuned", "--data", "pairs.jsonl", "--out"]
COMPARE = ["compare", "--model", "base", "--train", "train.en", "train.fr", "--eval", "train.en", "train.fr",
           "--methods", "base", "--out"]
CASES = [  # (command line, what the one-line error says)
    (CALIBRATE + ["base/model.safetensors"], "lies inside the model (--model) base"),
    (CALIBRATE + ["pairs.jsonl"], "is the data file (--data)"),
    (CALIBRATE + ["x.safetensors", "--plot", "base/config.json"], "--plot base/config.json lies inside the model"),
    (CALIBRATE + ["file.txt/x.safetensors"], "lies under file.txt, which is a file"),
    (SELECT + ["tuned/model.safetensors"], "lies inside the fine-tuned model (--finetuned) tuned"),
    (SELECT + ["base/model.safetensors"], "lies inside the base model (--base) base"),
    (SELECT + ["tuned"], "is a folder"),
    (ANALYZE + ["tuned"], "is the model (--model-b)"),
    (ANALYZE + ["."], "holds the data file (--data) pairs.jsonl"),
    (ANALYZE + ["base/report"], "lies inside the model (--model-a) base"),
    (ANALYZE + ["mine"], "already holds files this command did not write (such as notes.txt); pass --overwrite"),
    (ANALYZE + ["file.txt"], "is a file"),
    (COMPARE + ["file.txt/x"], "lies under file.txt, which is a file"),
    (COMPARE + ["base"], "is the model (--model)"),
    (COMPARE + ["."], "holds the data file (--train) train.en"),
    (COMPARE + ["mine"], "already holds files this command did not write (such as notes.txt); pass --overwrite"),
    (["demo", "--out", "mine"], "already holds files this command did not write"),
    (["demo", "--out", "file.txt/x"], "lies under file.txt, which is a file"),
    (["report", "results", "--out", "results/merged"], "lies inside the results folder results"),
    (["report", "results", "--out", "mine"], "already holds files this command did not write"),
    (["export-lora", "adapter", "adapter/lora", "--base", "base"], "lies inside the source adapter adapter"),
    (["export-lora", "adapter", "mine", "--base", "base"], "already holds files this command did not write"),
    (["import-lora", "adapter", "."], "holds the source adapter adapter"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_every_writing_command_refuses_an_unsafe_output_and_touches_nothing(work, capsys, argv, message):
    before = _snapshot(work)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert _snapshot(work) == before


def test_export_into_the_current_folder_is_refused_even_with_overwrite(work, capsys, monkeypatch):
    """Replacing the working folder cannot succeed; it is refused before anything is written."""
    monkeypatch.chdir(work / "empty")
    before = _snapshot(work)
    assert main(["export-lora", str(work / "adapter"), ".", "--base", str(work / "base"), "--overwrite"]) == 2
    assert "is the current folder or holds it, so it cannot be replaced" in capsys.readouterr().err
    assert _snapshot(work) == before


@pytest.mark.parametrize(("out", "folder", "kwargs"), [
    ("empty", True, {}),  # an empty folder
    ("new/deeper", True, {}),  # created
    ("mine", True, {"overwrite": True}),  # the user said so
    ("results", True, {"ours": lambda p: (p / "results.json").is_file()}),  # the command's own: resumed
    ("mine/selection.safetensors", False, {}),  # a new file in a folder that is no input
    ("file.txt", False, {}),  # a file the user named is replaced
])
def test_what_the_rule_allows(work, out, folder, kwargs):
    check_output(out, {"base": "model", "pairs.jsonl": "data file"}, folder=folder, **kwargs)


def test_an_earlier_report_is_replaced_without_overwrite(work):
    """analyze may replace the report it wrote before (a rerun), not any other folder."""
    from peft_neft.commands.analyze import _own_report

    (work / "report").mkdir()
    for name in ("report.json", "neurons.safetensors"):
        (work / "report" / name).write_text("{}")
    check_output("report", {}, folder=True, ours=_own_report, replaced=True)
    with pytest.raises(ValueError, match="pass --overwrite"):
        check_output("mine", {}, folder=True, ours=_own_report, replaced=True)


def test_an_output_in_a_read_only_folder_is_refused(work, monkeypatch):
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a non-root user in a read-only folder
    with pytest.raises(ValueError, match="cannot be written: no write permission in mine"):
        check_output("mine/x.safetensors", {}, folder=False)



def test_a_comparison_interrupted_before_its_first_result_resumes_without_overwrite(work):
    """Its folder holds only what compare writes (checkpoints, a temporary of results.json), no results.json yet."""
    from peft_neft.commands._options import check_out_folder

    (work / "cut" / "checkpoints" / "lora_2@seed0@lr0.001").mkdir(parents=True)
    (work / "cut" / ".results.json.x1y2.tmp").write_text("")
    check_out_folder("cut", {}, overwrite=False)
    (work / "cut" / "notes.txt").write_text("a user's")
    with pytest.raises(ValueError, match="already holds files this command did not write"):
        check_out_folder("cut", {}, overwrite=False)
    (work / "cut" / "results.json").write_text("{}")  # a results folder: resumed, whatever else the user put there
    check_out_folder("cut", {}, overwrite=False)


@pytest.mark.parametrize(("argv", "message"), [
    (["export-lora", "adapter", "lora", "--max-rank", "0"], "argument --max-rank/--max_rank: must be at least 1, got 0"),
    (["analyze", *ANALYZE[1:], "out", "--strong-threshold", "nan"], "--strong-threshold"),
    (["select", *SELECT[1:5], "--percent", "nan", "--out", "s.safetensors"], "argument --percent: must be a finite"),
])
def test_bad_numbers_are_usage_errors_naming_the_option(work, capsys, argv, message):
    before = _snapshot(work)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert _snapshot(work) == before
