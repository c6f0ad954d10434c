"""Usage errors come before any work: a missing data file before torch is imported, an uninstalled
``--report-to`` logger before any model loads. Each runs the command in a fresh process, so that whether torch
was imported can be read from ``sys.modules``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_RUN = ("import json, sys\nfrom peft_neft.cli import main\nrc = main(sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")


def _run(tmp_path: Path, *argv: str) -> tuple[dict, str]:
    """The command's exit status and whether torch was imported, and its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _RUN, *argv], cwd=tmp_path, env=env, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize("argv", [
    ["compare", "--train", "missing.jsonl", "--eval", "missing.jsonl", "--methods", "base", "--out", "o"],
    ["compare", "--train", "train.en", "train.fr", "--eval", "t.jsonl", "--methods", "base", "--out", "o"],
    ["calibrate", "--data", "data/missing.jsonl.gz", "--percent", "1", "--out", "s.safetensors"],
    ["analyze", "--model-a", "default", "--model-b", "default", "--data", "texts.txt", "--out", "report"],
], ids=["compare-jsonl", "compare-text-pair", "calibrate", "analyze"])
def test_a_missing_data_file_is_reported_before_torch_is_imported(tmp_path, argv):
    result, err = _run(tmp_path, *argv)
    assert result == {"rc": 2, "torch": False}, err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith(f"peft-neft {argv[0]}: error: --") and "does not exist; check the path" in line


def test_an_uninstalled_report_to_logger_is_named_with_its_fix_before_any_model_loads(tmp_path):
    missing = next((name for name in ("wandb", "mlflow", "swanlab", "trackio") if importlib.util.find_spec(name) is None),
                   None)
    if missing is None:
        pytest.skip("every logger this test could name is installed")
    (tmp_path / "d.jsonl").write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    result, err = _run(tmp_path, "compare", "--train", "d.jsonl", "--eval", "d.jsonl", "--methods", "base",
                       "--out", "o", "--report-to", missing)
    assert result == {"rc": 2, "torch": False}, err
    assert f"--report-to {missing} needs the {missing} package" in err and f"pip install {missing}" in err
    assert not (tmp_path / "o").exists()


def test_an_unknown_report_to_logger_lists_the_known_ones(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    result, err = _run(tmp_path, "demo", "--report-to", "tensorbord")
    assert result == {"rc": 2, "torch": False}, err
    assert "'tensorbord' is not one of Trainer's loggers" in err and "tensorboard" in err
