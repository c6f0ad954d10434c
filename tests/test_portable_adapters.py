"""Saved adapters name their base model by its Hub id where it has one (the embedded SmolLM2 included), so a copy
in another folder, on another machine, loads with ``AutoPeftModelForCausalLM``: here in a fresh process whose
Hugging Face cache holds the base model under that id and that may not reach the network."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.utils import CONFIG_NAME

from peft_neft import NeFTConfig, save_pretrained_atomically
from peft_neft.embedded_model import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, cache_dir, load_model, resolve_model_path

from conftest import make_tiny_llama, put_in_hub_cache

ROWS = {"model.layers.0.mlp.up_proj": [1, 9], "model.layers.1.self_attn.q_proj": [4]}

def load_elsewhere(adapter: Path, hub_cache: Path, inputs: torch.Tensor, out: Path) -> subprocess.CompletedProcess:
    """Load ``adapter`` with AutoPeftModelForCausalLM in a fresh process, offline, with ``hub_cache`` as the
    Hugging Face cache and an empty peft-neft cache, and save its logits on ``inputs`` to ``out``."""
    script = textwrap.dedent(f"""
        import torch
        import peft_neft
        from peft import AutoPeftModelForCausalLM
        model = AutoPeftModelForCausalLM.from_pretrained({str(adapter)!r}).eval()
        with torch.no_grad():
            torch.save(model(input_ids=torch.tensor({inputs.tolist()!r})).logits, {str(out)!r})
        print("base:", model.peft_config["default"].base_model_name_or_path)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(hub_cache.parent),
           "PEFT_NEFT_CACHE": str(hub_cache.parent / "no-peft-neft-cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env,
                          cwd=hub_cache.parent)


def _train_a_little(model) -> None:
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.manual_seed(len(name))
            param.data.add_(torch.randn_like(param) * 0.1)


@pytest.fixture
def embedded_tiny(tmp_path, monkeypatch):
    """A tiny Llama standing in for the embedded model: saved where peft-neft keeps its converted SmolLM2."""
    monkeypatch.setenv("PEFT_NEFT_CACHE", str(tmp_path / "peft-neft-cache"))
    folder = cache_dir() / DEFAULT_MODEL
    make_tiny_llama().save_pretrained(folder)
    return folder


def test_the_embedded_model_loads_named_by_its_hub_id_and_the_hub_id_resolves_to_it(embedded_tiny):
    model = load_model()
    assert model.name_or_path == model.config.name_or_path == DEFAULT_MODEL_HUB_ID
    assert load_model(embedded_tiny).name_or_path == DEFAULT_MODEL_HUB_ID
    assert resolve_model_path(DEFAULT_MODEL_HUB_ID) == str(embedded_tiny)


def test_a_users_own_folder_stays_a_path(tmp_path):
    make_tiny_llama().save_pretrained(tmp_path / "mine")
    assert load_model(tmp_path / "mine").name_or_path == str(tmp_path / "mine")


@pytest.mark.parametrize(("kind", "save"), [("neft", "atomically"), ("neft", "plain"), ("lora", "atomically")])
def test_an_adapter_of_the_embedded_model_copied_elsewhere_loads_with_auto_peft_model(embedded_tiny, tmp_path, kind,
                                                                                       save):
    """NeFT saved by peft-neft (demo, compare) and by plain peft, and compare's LoRA baseline."""
    config = NeFTConfig(neurons=ROWS, task_type="CAUSAL_LM") if kind == "neft" else \
        LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(load_model(), config)
    _train_a_little(model)
    saved = tmp_path / "home-a" / "adapter"
    if save == "atomically":
        save_pretrained_atomically(model, saved)
    else:
        model.save_pretrained(saved)
    assert json.loads((saved / CONFIG_NAME).read_text())["base_model_name_or_path"] == DEFAULT_MODEL_HUB_ID
    copy = tmp_path / "home-b" / "received"
    shutil.copytree(saved, copy)
    shutil.rmtree(tmp_path / "home-a")
    hub = tmp_path / "home-b" / "hf" / "hub"
    put_in_hub_cache(hub, DEFAULT_MODEL_HUB_ID, embedded_tiny)
    inputs = torch.tensor([[1, 5, 9, 30, 2]])
    result = load_elsewhere(copy, hub, inputs, tmp_path / "logits.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"base: {DEFAULT_MODEL_HUB_ID}" in result.stdout
    with torch.no_grad():
        expected = model.eval()(input_ids=inputs).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


def test_a_saved_adapter_records_the_hub_id_even_when_built_on_the_embedded_folder_itself(embedded_tiny, tmp_path):
    """A user who loads the cache folder with transformers directly still saves a portable adapter."""
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(embedded_tiny), NeFTConfig(neurons=ROWS))
    assert model.peft_config["default"].base_model_name_or_path == str(embedded_tiny)
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())["base_model_name_or_path"] == DEFAULT_MODEL_HUB_ID
