"""The command line as a user drives it: a config file with flags over it, argument errors before any work,
Ctrl-C, and a quiet run (no library chatter, every line once), on a tiny Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from transformers import AutoTokenizer

from conftest import make_tiny_llama
from peft_neft.cli import main
from peft_neft.tasks import django_translation_pairs

CHATTER = ("Failed to load", "Detected no triton", "register_constant", "_pytree")


@pytest.fixture(scope="module")
def setup(smollm2_dir, tmp_path_factory):
    """A tiny model folder (SmolLM2's tokenizer) and English/French files of 12 training and 2 test pairs."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    make_tiny_llama(vocab=len(tokenizer)).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    pairs = django_translation_pairs("fr")
    for split, n in (("train", 12), ("test", 2)):
        (root / f"{split}.en").write_text("\n".join(pairs[split]["source"][:n]) + "\n")
        (root / f"{split}.fr").write_text("\n".join(pairs[split]["target"][:n]) + "\n")
    return root


def _config(root, out, **extra) -> dict:
    return {"model": str(root / "tiny"), "train": [str(root / "train.en"), str(root / "train.fr")],
            "eval": [str(root / "test.en"), str(root / "test.fr")], "methods": "lora:2", "output_dir": str(out),
            "max_steps": 2, "batch_size": 2, "eval_steps": 5, "max_new_tokens": 2, "eval_batch_size": 2,
            "learning_rates": {"lora": 1e-3}, **extra}


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "peft_neft.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def test_compare_with_a_config_file_and_flags_over_it_runs_quietly(setup, tmp_path):
    import yaml

    out = tmp_path / "out"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(setup, out)))
    process = _cli("compare", "--config", str(tmp_path / "c.yaml"), "--max_steps", "5")
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    stored = json.loads((out / "results.json").read_text())
    run = stored["runs"]["lora:2@seed0"]
    assert run["steps_run"] == 5  # the flag wins over the file's max_steps: 2
    assert stored["identity"]["config"]["batch_size"] == 2 and run["lr"] == 1e-3  # the file's settings hold
    assert not [line for line in stderr.splitlines() if any(c in line for c in CHATTER)], stderr
    lines = [line for line in (stdout + stderr).splitlines() if line.strip() and not line.startswith("|")]
    assert len(lines) == len(set(lines)), lines  # nothing shown twice ...
    logged = [line.split("] ", 1)[1] for line in lines if line.startswith("[peft_neft.")]
    assert not set(logged) & set(lines), lines  # ... not even once bare and once with the logger's name
    assert sum("precision: " in line for line in lines) == 1  # the choice made (whatever this CPU picks), shown once


def test_a_json_config_file_and_its_errors(setup, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps({"percent": 0, "out": str(tmp_path / "s.safetensors"),
                                                 "data": str(tmp_path / "d.jsonl")}))
    assert main(["calibrate", "--config", str(tmp_path / "c.json")]) == 2  # the file's --percent is checked
    assert capsys.readouterr().err.splitlines()[-1].startswith("peft-neft calibrate: error: percent must lie in")
    (tmp_path / "bad.yaml").write_text("max_steps: 5\nbatch_sise: 4\n")
    assert main(["compare", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"peft-neft: error: --config {tmp_path / 'bad.yaml'}: peft-neft compare has no option 'batch_sise'; the keys "
        "are its long option names, such as max_steps or batch-size (see --help)."]
    (tmp_path / "list.yaml").write_text("- max_steps\n")
    assert main(["compare", "--config", str(tmp_path / "list.yaml")]) == 2
    assert "must hold a mapping" in capsys.readouterr().err


def test_argument_errors_come_before_any_work(setup, tmp_path, capsys):
    missing = tmp_path / "not-there"  # read only after the arguments are checked
    select = ["select", "--base", str(missing), "--finetuned", str(missing), "--out", str(tmp_path / "s.safetensors")]
    for budget, message in ((["--percent", "101"], "percent must lie in (0, 100]"),
                            (["--num-neurons", "0"], "argument --num-neurons/--num_neurons: must be at least 1, got 0")):
        assert main([*select, *budget]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    compare = ["compare", "--train", str(missing), "--eval", str(missing), "--methods", "lora:2"]
    assert main([*compare, "--out", str(tmp_path / "file")]) == 2
    assert f"--out {tmp_path / 'file'} is a file" in capsys.readouterr().err
    (tmp_path / "o" / "results.json").mkdir(parents=True)
    assert main([*compare, "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'o' / 'results.json'} is a folder" in capsys.readouterr().err


def test_ctrl_c_keeps_the_finished_runs_and_says_how_to_resume(setup, tmp_path):
    out = tmp_path / "out"
    args = ["compare", "--model", str(setup / "tiny"), "--train", str(setup / "train.en"), str(setup / "train.fr"),
            "--eval", str(setup / "test.en"), str(setup / "test.fr"), "--methods", "base,lora:2", "--steps", "100000",
            "--eval-every", "100000", "--patience", "0", "--batch-size", "2", "--max-new-tokens", "2", "--out", str(out)]
    # Ctrl-C as a terminal delivers it, whatever launched the tests: a shell's background job ignores SIGINT, and
    # its children inherit that.
    process = _cli(*args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while not (out / "results.json").is_file() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
        time.sleep(3)  # into lora:2's training
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()  # never left training (for 100,000 steps) after a failure
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (f"peft-neft compare: interrupted; the finished runs are kept in {out}/results.json;"
                                       " run the same command again to resume.")
    assert set(json.loads((out / "results.json").read_text())["runs"]) == {"base@seed0"}


def test_a_resume_mismatch_names_the_keys_that_differ(tmp_path):
    from peft_neft.compare.results import load_results, save_results

    identity = {"config": {"max_steps": 3, "lr_grid": [1.0], "learning_rates": {"lora": 1e-3}},
                "data": {"train": {"rows": 12, "sha256": "ab"}}, "model": "tiny", "device": "cpu"}
    path = tmp_path / "results.json"
    save_results(path, load_results(path, identity))
    changed = json.loads(json.dumps(identity))
    changed["config"]["max_steps"], changed["config"]["learning_rates"]["lora"] = 5, 2e-3
    changed["data"]["train"]["rows"] = 10
    with pytest.raises(ValueError) as caught:
        load_results(path, changed)
    assert str(caught.value) == (
        f"{tmp_path} holds results of a different configuration (config.learning_rates.lora: stored 0.001, now 0.002; "
        "config.max_steps: stored 3, now 5; data.train.rows: stored 12, now 10). Use a new --out folder, or rerun "
        "with the stored settings to resume.")
    assert load_results(path, identity)["identity"] == identity


def test_compare_without_matplotlib_runs_and_says_the_plot_was_skipped(setup, tmp_path):
    out = tmp_path / "out"
    argv = ["compare", "--model", str(setup / "tiny"), "--train", str(setup / "train.en"), str(setup / "train.fr"),
            "--eval", str(setup / "test.en"), str(setup / "test.fr"), "--methods", "base", "--max-new-tokens", "2",
            "--out", str(out)]
    code = ("import sys; sys.modules['matplotlib'] = None  # as if not installed\n"
            f"from peft_neft.cli import main; sys.exit(main({argv!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the plot (results.png) is skipped; pip install matplotlib" in result.stdout
    assert f"results and table written to {out}/ (no plot" in result.stdout
    assert (out / "results.md").is_file() and not (out / "results.png").exists()
