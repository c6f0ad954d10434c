"""`peft-neft demo`, the README's first command, end to end on the embedded SmolLM2 (shortened)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from peft_neft.cli import main
from peft_neft.embedded_model import DEFAULT_MODEL_HUB_ID

from conftest import put_in_hub_cache


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
    # Copied to another home, whose Hugging Face cache holds the base under its Hub id (the embedded model's files
    # here), each loads with AutoPeftModelForCausalLM, offline and without peft-neft's cache.
    for name in ("lora_2", "neft_match-lora_2"):
        assert json.loads((adapters / name / "adapter_config.json").read_text())["base_model_name_or_path"] == \
            DEFAULT_MODEL_HUB_ID
        card = (adapters / name / "README.md").read_text()
        assert "More Information Needed" not in card and "### Prompt format" in card and "sacrebleu" in card
        assert (adapters / name / "tokenizer_config.json").is_file()
    home = tmp_path / "elsewhere"
    shutil.copytree(adapters, home / "received")
    put_in_hub_cache(home / "hf" / "hub", DEFAULT_MODEL_HUB_ID, smollm2_dir)
    code = ("import sys, peft_neft; from peft import AutoPeftModelForCausalLM\n"
            "for folder in sys.argv[1:]:\n"
            "    model = AutoPeftModelForCausalLM.from_pretrained(folder)\n"
            "    print(type(model).__name__, model.peft_config['default'].peft_type)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(home / "hf" / "hub"),
           "PEFT_NEFT_CACHE": str(home / "no-peft-neft-cache")}
    received = [str(home / "received" / n) for n in ("lora_2", "neft_match-lora_2")]
    loaded = subprocess.run([sys.executable, "-c", code, *received], capture_output=True, text=True, timeout=600,
                            env=env, cwd=home)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split("\n")[:2] == ["PeftModelForCausalLM PeftType.LORA", "PeftModelForCausalLM PeftType.NEFT"]
    assert main(["export-lora", str(adapters / "neft_match-lora_2"), str(tmp_path / "exported")]) == 0
    exported = json.loads((tmp_path / "exported" / "adapter_config.json").read_text())
    assert exported["peft_type"] == "LORA" and exported["base_model_name_or_path"] == DEFAULT_MODEL_HUB_ID
