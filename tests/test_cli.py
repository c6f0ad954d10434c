"""The ``peft-neft`` parser: cheap to build, quiet, versioned, every option explained with its default."""

import argparse
import re
import subprocess
import sys

import pytest

import peft_neft
from peft_neft.cli import build_parser


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peft_neft.cli", *args], capture_output=True, text=True, timeout=600)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_building_the_parser_imports_no_command_dependencies():
    code = (
        "import sys; from peft_neft.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'peft', 'transformers', 'torchao', 'trl', 'matplotlib', 'datasets', "
        "'sacrebleu', 'rouge_score') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["compare", "--help"]])
def test_help_prints_no_warnings(args):
    result = _run(*args)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: peft-neft")
    assert result.stderr == ""


def test_version():
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"peft-neft {peft_neft.__version__}"


def test_every_option_has_help_and_shows_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no line wrapping
    for name, sub in _subparsers().items():
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, f"peft-neft {name} {action.option_strings or action.dest} has no help text"
            if action.option_strings and type(action.default) in (int, float, str) and action.default != argparse.SUPPRESS:
                assert f"(default: {action.default})" in text, (name, action.option_strings)
        assert not re.search(r"\(default [^:]", text), f"peft-neft {name}: a default written by hand in a help text"


def test_common_options_reach_every_command():
    for name, sub in _subparsers().items():
        assert {"--log-level", "--no-progress"} <= {o for a in sub._actions for o in a.option_strings}, name
    select = ["select", "--base", "a", "--finetuned", "b", "--percent", "1", "--out", "s"]
    args = build_parser().parse_args([*select, "--no-progress", "--log-level", "WARNING"])
    assert args.progress is False and args.log_level == "WARNING"
    assert build_parser().parse_args(select).progress is None  # None: bars only on a terminal


def test_compare_flags_come_from_the_settings_and_match_the_library_defaults():
    # The parser must not import torch (it would cost --help seconds), so it reads the torch-free CompareSettings;
    # CompareConfig, which checks the values, must hold the same fields with the same defaults.
    from dataclasses import MISSING, fields

    from peft_neft.commands._options import settings_from_args
    from peft_neft.compare import CompareConfig
    from peft_neft.settings import CompareSettings

    def defaults(cls):
        return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cls)}

    assert defaults(CompareSettings) == defaults(CompareConfig)
    compare = _subparsers()["compare"]
    dests = {a.dest for a in compare._actions}
    assert {f.name for f in fields(CompareSettings)} <= dests  # every setting has a flag
    args = compare.parse_args(["--train", "t.jsonl", "--eval", "e.jsonl", "--methods", "lora:8", "--out", "out"])
    assert CompareConfig(**settings_from_args(CompareSettings, args)) == CompareConfig()


def test_both_spellings_and_trainer_names_are_accepted():
    base = ["compare", "--train", "t.jsonl", "--eval", "e.jsonl", "--methods", "lora:8"]
    dashed = build_parser().parse_args([*base, "--out", "o", "--batch-size", "4", "--steps", "7", "--eval-every", "3",
                                        "--lr", "lora=1e-3", "--lr-grid", "1,3", "--seeds", "0,1"])
    trainer = build_parser().parse_args([*base, "--output_dir", "o", "--per_device_train_batch_size", "4",
                                         "--max_steps", "7", "--eval_steps", "3", "--learning_rates", "lora=1e-3",
                                         "--lr_grid", "1", "3", "--seed", "0", "1"])
    assert vars(dashed) == vars(trainer)
    assert (dashed.out, dashed.batch_size, dashed.max_steps, dashed.eval_every) == ("o", 4, 7, 3)
    assert dashed.learning_rates == {"lora": 1e-3} and dashed.lr_grid == (1.0, 3.0) and dashed.seeds == (0, 1)
    for name, sub in _subparsers().items():  # every dashed option of every command has its snake_case spelling
        for option in (o for a in sub._actions for o in a.option_strings if o.startswith("--") and "-" in o[2:]):
            assert sub._option_string_actions["--" + option[2:].replace("-", "_")].dest \
                == sub._option_string_actions[option].dest, (name, option)


def test_help_lists_each_option_once(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")
    text = _subparsers()["compare"].format_help()
    assert "--batch-size BATCH_SIZE, --per-device-train-batch-size BATCH_SIZE" in text
    assert "--batch_size" not in text and "--output-dir" in text


def test_new_settings_get_a_flag_without_touching_the_parser():
    from dataclasses import field, make_dataclass

    from peft_neft.commands._options import add_settings_arguments, settings_from_args

    Settings = make_dataclass("Settings", [
        ("workers", int, field(default=1, metadata={"help": "parallel runs"})),
        ("save_adapters", str, field(default="best", metadata={"help": "which", "choices": ("best", "all", "none")})),
        ("checkpoint_dir", "str | None", field(default=None, metadata={"help": "where"})),
    ])
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, Settings)
    args = parser.parse_args(["--workers", "3", "--save-adapters", "all", "--checkpoint-dir", "none"])
    assert settings_from_args(Settings, args) == {"workers": 3, "save_adapters": "all", "checkpoint_dir": None}
    with pytest.raises(SystemExit):
        parser.parse_args(["--save-adapters", "some"])


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_in_any_case_before_or_after_the_command(where):
    select = ["select", "--base", "a", "--finetuned", "b", "--percent", "1", "--out", "s"]
    argv = ["--log-level", "warning", *select] if where == "before" else [*select, "--log_level", "warning"]
    assert build_parser().parse_args(argv).log_level == "WARNING"
    assert build_parser().parse_args(select).log_level == "INFO"


def test_usage_errors_exit_2_with_one_line():
    result = _run("compare", "--train", "t.jsonl", "--eval", "e.jsonl", "--methods", "lora:8", "--out", "o",
                  "--steps", "many")
    assert result.returncode == 2 and "--steps" in result.stderr and "expected a whole number, got 'many'" in result.stderr
    result = _run("select", "--base", "a", "--finetuned", "b", "--percent", "0", "--out", "s")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "peft-neft select: error: percent must lie in (0, 100] (a share of all model parameters), got 0.0."]


def test_env_prints_versions_and_the_cpu_bf16_capability():
    from importlib.metadata import version

    result = _run("env")
    assert result.returncode == 0, result.stderr
    lines = dict(line[2:].split(": ", 1) for line in result.stdout.splitlines() if line.startswith("- "))
    assert lines["peft-neft"] == peft_neft.__version__ and lines["torch"] == version("torch")
    assert lines["transformers"] == version("transformers") and lines["peft"] == version("peft")
    assert {"accelerate", "trl", "Python", "Platform", "CUDA"} <= set(lines)
    assert lines["CPU bf16 matrix math"].split()[0] in ("native", "emulated")


@pytest.mark.parametrize("command, required, setting, value, dest", [
    ("compare", {"train": ["t.en", "t.fr"], "eval": ["e.jsonl"], "methods": "lora:8", "output_dir": "o"},
     "warmup_ratio", 0.2, "warmup_ratio"),
    ("demo", {}, "lr", {"neft": 1e-3}, "learning_rates"),
    ("calibrate", {"data": "d.jsonl", "num_neurons": 4, "out": "s.safetensors"}, "frugal", True, "frugal"),
    ("analyze", {"model_a": "a", "model_b": "b", "data": "d.jsonl", "out": "r"}, "target_modules", ["up_proj"],
     "target_modules"),
])
def test_config_file_for_every_command_that_trains_or_analyses(tmp_path, command, required, setting, value, dest):
    from peft_neft.cli import _with_config_file

    path = tmp_path / "c.json"
    path.write_text(__import__("json").dumps({**required, setting: value, "log_level": "debug"}))
    parser = build_parser()
    args = parser.parse_args(_with_config_file(parser, [command, "--config", str(path)]))
    expected = {"neft": 1e-3, "lora": 3e-3} if command == "demo" else value
    assert getattr(args, dest) == expected and args.log_level == "DEBUG"
    overridden = parser.parse_args(_with_config_file(parser, [command, "--config", str(path), "--log-level", "error"]))
    assert overridden.log_level == "ERROR"  # the command line wins over the file
