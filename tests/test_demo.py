"""`peft-neft demo`, the README's first command, end to end on the embedded SmolLM2 (shortened)."""

import json

import pytest

from peft_neft.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--methods", "base,lora:2,neft:match-lora:2", "--steps", "2", "--eval-every", "1",
            "--calibration-steps", "1", "--max-new-tokens", "2", "--eval-batch-size", "27"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| neft:match-lora:2 |" in printed and "## Paired tests" in printed
    stored = json.loads((out / "results.json").read_text())
    assert set(stored["runs"]) == {"base@seed0", "lora:2@seed0", "neft:match-lora:2@seed0"}
    assert stored["identity"]["dtype"] in ("float32", "bfloat16") and stored["identity"]["data"]["test"]["rows"] == 54
    assert all(r["steps_run"] == 2 for k, r in stored["runs"].items() if not k.startswith("base"))
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "outputs").glob("*.jsonl.gz"))) == 3
    assert main(args) == 0
    assert capsys.readouterr().err.count("already done, skipped") == 3
