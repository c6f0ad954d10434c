"""``examples/finetune_with_callback.py`` runs end to end, as a user runs it, on the tiny Llama in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from conftest import make_tiny_llama, make_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_finetune_with_callback_example_runs_on_the_tiny_model(tmp_path):
    model_dir = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "finetune_with_callback.py"), "--model",
                           str(model_dir), "--out", str(out), "--percent", "5"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged and LoRA export give the trained logits" in done.stdout
    assert (out / "selection.safetensors").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "adapter" / "tokenizer.json").is_file()
    lora = load_file(out / "lora" / "adapter_model.safetensors")
    assert any("lora_A" in name for name in lora) and any("lora_B" in name for name in lora)
