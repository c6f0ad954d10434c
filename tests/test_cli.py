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


def test_compare_options_default_to_the_library_defaults():
    # The parser must not import the library (it would cost --help seconds), so the defaults are written in both
    # places; this keeps the two equal.
    from peft_neft.commands.compare import config_arguments
    from peft_neft.compare import CompareConfig

    args = _subparsers()["compare"].parse_args(["--train", "t.jsonl", "--eval", "e.jsonl", "--methods", "lora:8",
                                                 "--out", "out"])
    given = CompareConfig(task=args.task, source_lang=args.source_lang, target_lang=args.target_lang,
                          max_source_tokens=args.max_source_tokens, max_target_tokens=args.max_target_tokens,
                          char_level=args.char_level, **config_arguments(args))
    assert given == CompareConfig()
