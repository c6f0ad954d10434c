"""The library logs through ``logging`` and stays quiet by default; only the command line prints."""

import ast
import logging
from pathlib import Path

import torch

import peft_neft
from peft_neft.cli import main

from conftest import make_tiny_llama

PACKAGE = Path(peft_neft.__file__).parent
# The command line: the parser, the subcommands, and the argparse helpers only they call.
CLI_MODULES = {"cli.py"}


def _prints(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]


def test_no_print_outside_the_command_line():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in CLI_MODULES or relative.startswith("commands/"):
            continue
        if lines := _prints(path):
            found[relative] = lines
    assert found == {}, f"print() in library modules (log through logging instead): {found}"


def test_package_logger_is_quiet_by_default():
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("peft_neft").handlers)


def test_cli_shows_the_library_log_at_the_chosen_level(tmp_path, capsys):
    base = make_tiny_llama()
    base.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[3] += 1.0
    base.save_pretrained(tmp_path / "tuned")
    args = ["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "tuned"), "--num-neurons", "1",
            "--out", str(tmp_path / "sel.safetensors")]
    capsys.readouterr()
    assert main([*args, "--log-level", "WARNING"]) == 0
    assert "[peft_neft" not in capsys.readouterr().err
    assert main(args) == 0
    logged = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[peft_neft")]
    assert logged == [f"[peft_neft.selection.cosine] Scored 192 neurons in 4 weight matrices of {tmp_path / 'base'} "
                      f"against {tmp_path / 'tuned'}."]
    assert logging.getLogger("peft_neft").level == logging.NOTSET


def test_a_command_shows_each_library_record_once_on_stderr(monkeypatch, capsys):
    import io

    from peft_neft.cli import command_logging

    stderr = io.StringIO()
    monkeypatch.setattr(logging.root, "handlers", [logging.StreamHandler(stderr)])  # an application's root handler
    with command_logging("INFO"):
        logging.getLogger("peft_neft.compare.run").info("lora:8@seed0 already done, skipped")
    shown = capsys.readouterr()
    assert shown.err == "[peft_neft.compare.run] lora:8@seed0 already done, skipped\n" and shown.out == ""
    assert stderr.getvalue() == ""


def test_a_command_honours_the_log_level(capsys):
    from peft_neft.cli import command_logging

    with command_logging("WARNING"):
        logging.getLogger("peft_neft.compare.run").info("lora:8@seed0 already done, skipped")
        logging.getLogger("peft_neft.compare.run").warning("a warning")
    assert capsys.readouterr().err == "[peft_neft.compare.run] a warning\n"
    assert logging.getLogger("peft_neft").level == logging.NOTSET  # restored after the command


def test_a_log_record_never_lands_inside_a_progress_bar(capsys):
    import re
    import sys

    from tqdm.auto import tqdm

    from peft_neft.cli import command_logging

    with command_logging("INFO"):
        bar = tqdm(total=2, file=sys.stderr, desc="training")
        bar.update(1)
        logging.getLogger("peft_neft.training").info("best validation loss 1.00 at step 1")
        bar.update(1)
        bar.close()
    pieces = re.split(r"[\r\n]", capsys.readouterr().err)
    assert "[peft_neft.training] best validation loss 1.00 at step 1" in pieces
    assert any(p.startswith("training: 100%") for p in pieces)


def test_log_level_debug_shows_the_decisions_and_the_paths_written(tmp_path, capsys):
    base = make_tiny_llama()
    base.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[3] += 1.0
    base.save_pretrained(tmp_path / "tuned")
    capsys.readouterr()
    assert main(["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "tuned"), "--num-neurons",
                 "1", "--out", str(tmp_path / "sel.safetensors"), "--log-level", "debug"]) == 0
    debug = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[peft_neft")]
    assert any("selected 1 rows" in line and "strategy lowest" in line for line in debug), debug
    assert f"[peft_neft.atomic] wrote {tmp_path / 'sel.safetensors'}" in debug
