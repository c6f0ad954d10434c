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


def test_cli_shows_the_library_log_at_the_chosen_level(tmp_path, caplog):
    base = make_tiny_llama()
    base.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[3] += 1.0
    base.save_pretrained(tmp_path / "tuned")
    args = ["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "tuned"), "--num-neurons", "1",
            "--out", str(tmp_path / "sel.safetensors")]
    caplog.set_level(logging.NOTSET)
    try:
        assert main([*args, "--log-level", "WARNING"]) == 0
        assert not [r for r in caplog.records if r.name.startswith("peft_neft")]
        assert main(args) == 0
        messages = [r.getMessage() for r in caplog.records if r.name == "peft_neft.selection.cosine"]
        assert messages == [f"Scored 192 neurons in 4 weight matrices of {tmp_path / 'base'} against {tmp_path / 'tuned'}."]
    finally:
        logging.getLogger("peft_neft").setLevel(logging.NOTSET)


def test_a_command_shows_each_library_record_once(monkeypatch, capsys):
    import io

    from peft_neft.cli import configure_logging
    from peft_neft.commands.compare import console_logs

    stderr = io.StringIO()
    monkeypatch.setattr(logging.root, "handlers", [logging.StreamHandler(stderr)])  # as basicConfig leaves it
    monkeypatch.setattr(logging.getLogger("peft_neft"), "level", logging.NOTSET)
    configure_logging("INFO")
    with console_logs():
        logging.getLogger("peft_neft.compare.run").info("lora:8@seed0 already done, skipped")
    assert capsys.readouterr().out.count("already done") == 1
    assert stderr.getvalue() == ""


def test_a_command_honours_the_log_level(monkeypatch, capsys):
    from peft_neft.cli import configure_logging
    from peft_neft.commands.compare import console_logs

    monkeypatch.setattr(logging.getLogger("peft_neft"), "level", logging.NOTSET)
    configure_logging("WARNING")
    with console_logs():
        logging.getLogger("peft_neft.compare.run").info("lora:8@seed0 already done, skipped")
        logging.getLogger("peft_neft.compare.run").warning("a warning")
    assert capsys.readouterr().out == "[peft_neft.compare.run] a warning\n"
