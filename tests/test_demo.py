"""`peft-neft demo`, the README's first command, end to end on the embedded SmolLM2 (shortened)."""

import json
import subprocess
import sys

import pytest

from peft_neft.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--methods", "base,lora:2,neft:match-lora:2", "--steps", "2", "--eval-every", "1",
            "--calibration-steps", "1", "--max-new-tokens", "2", "--eval-batch-size", "27"]
    assert main(args) == 0
    shown = capsys.readouterr()
    printed = shown.out
    assert "| neft:match-lora:2 |" in printed and "## Paired tests" in printed
    # The data, the choices made, progress and the table, each once; no library chatter.
    lines = [line for line in (shown.out + shown.err).splitlines() if line.strip() and not line.startswith("|")]
    assert len(lines) == len(set(lines)), lines
    logged = {line.split("] ", 1)[1] for line in lines if line.startswith("[peft_neft.")}
    assert not logged & set(lines), lines  # not once bare and once with the logger's name
    assert not [line for line in lines if any(c in line for c in ("Failed to load", "triton", "register_constant"))]
    assert sum(line.startswith("data: Django's English->French catalogs") for line in lines) == 1
    stored = json.loads((out / "results.json").read_text())
    assert set(stored["runs"]) == {"base@seed0", "lora:2@seed0", "neft:match-lora:2@seed0"}
    assert stored["identity"]["dtype"] in ("float32", "bfloat16") and stored["identity"]["data"]["test"]["rows"] == 54
    assert all(r["steps_run"] == 2 for k, r in stored["runs"].items() if not k.startswith("base"))
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert all((out / "outputs" / f"{k.replace(':', '_')}.jsonl.gz").is_file() for k in stored["runs"])
    assert main(args) == 0
    assert capsys.readouterr().err.count("already done, skipped") == 3
    # What the demo trained is kept: each method's best adapter loads in a fresh process, and NeFT's exports.
    adapters = out / "adapters"
    assert sorted(p.name for p in adapters.iterdir()) == ["lora_2", "neft_match-lora_2"]
    assert f"{out}/adapters/" in printed and (adapters / "neft_match-lora_2" / "selection.safetensors").is_file()
    code = ("import sys, peft_neft; from peft import AutoPeftModelForCausalLM\n"
            "for folder in sys.argv[1:]:\n"
            "    model = AutoPeftModelForCausalLM.from_pretrained(folder)\n"
            "    print(type(model).__name__, model.peft_config['default'].peft_type)")
    loaded = subprocess.run([sys.executable, "-c", code, *(str(adapters / n) for n in ("lora_2", "neft_match-lora_2"))],
                            capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split("\n")[:2] == ["PeftModelForCausalLM PeftType.LORA", "PeftModelForCausalLM PeftType.NEFT"]
    assert main(["export-lora", str(adapters / "neft_match-lora_2"), str(tmp_path / "exported")]) == 0
    assert json.loads((tmp_path / "exported" / "adapter_config.json").read_text())["peft_type"] == "LORA"
