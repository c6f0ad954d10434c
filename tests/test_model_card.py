"""A saved NeFT adapter carries a model card its receiver can follow: Hub id or no base model at all (never a
local path), working install and loading instructions, the selection and the versions, no empty template."""

import os
import re
import subprocess
import sys

from huggingface_hub import ModelCard
from peft import __version__ as peft_version
from peft import get_peft_model
from transformers import AutoModelForCausalLM

import peft_neft
from peft_neft import NeFTConfig, NeuronSelection, save_pretrained_atomically
from peft_neft.embedded_model import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, cache_dir, hub_id

from conftest import make_tiny_llama

ROWS = {"model.layers.0.mlp.up_proj": [1, 9], "model.layers.1.mlp.down_proj": [4]}
SELECTION = NeuronSelection(rows={k: __import__("torch").tensor(v) for k, v in ROWS.items()},
                            metadata={"method": "cosine", "strategy": "global",
                                      "budget": {"unit": "params", "value": 128}})


def _save_adapter(tmp_path):
    base_dir = tmp_path / "base"
    make_tiny_llama().save_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), NeFTConfig.from_selection(SELECTION))
    save_pretrained_atomically(model, tmp_path / "adapter")
    return base_dir, tmp_path / "adapter"


def test_card_names_no_local_path_and_summarises_selection_and_versions(tmp_path):
    base_dir, adapter = _save_adapter(tmp_path)
    text = (adapter / "README.md").read_text()
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"neft", "peft-neft"} <= set(card.data.tags)
    assert card.data.base_model is None and str(base_dir) not in text and str(tmp_path) not in text
    assert not [t for t in card.data.tags if t.startswith("base_model:adapter:")]
    assert "[More Information Needed]" not in text and "Model Card for Model ID" not in text
    assert "pip install peft-neft" not in text and "pip install /path/to/peft-neft" in text
    assert "- modules: 2" in text and "- selected rows: 3 " in text
    assert "- trainable parameters: 128" in text  # 2 rows x 32 inputs + 1 row x 64
    assert "- scorer: cosine (global)" in text and "- budget: 128 params" in text
    assert f"peft-neft {peft_neft.__version__}, peft {peft_version}" in text
    assert text.index("import peft_neft") < text.index("PeftModel.from_pretrained(")
    assert "peft-neft export-lora ADAPTER_DIR OUT_DIR --base BASE_MODEL" in text


def test_the_embedded_model_is_named_by_its_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_NEFT_CACHE", str(tmp_path / "cache"))
    embedded = cache_dir() / DEFAULT_MODEL
    embedded.mkdir(parents=True)
    assert hub_id(embedded) == hub_id("default") == DEFAULT_MODEL_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("gpt2") == "gpt2" and hub_id(tmp_path) is None and hub_id("/no/such/folder") is None
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS))
    model.peft_config["default"].base_model_name_or_path = str(embedded)
    save_pretrained_atomically(model, tmp_path / "adapter")
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.base_model == DEFAULT_MODEL_HUB_ID
    assert f"base_model:adapter:{DEFAULT_MODEL_HUB_ID}" in card.data.tags
    assert f'AutoModelForCausalLM.from_pretrained("{DEFAULT_MODEL_HUB_ID}")' in card.text
    assert str(tmp_path) not in (tmp_path / "adapter" / "README.md").read_text()


def test_saving_again_keeps_one_section_and_what_the_user_wrote(tmp_path):
    _, adapter = _save_adapter(tmp_path)
    text = (adapter / "README.md").read_text()
    (adapter / "README.md").write_text(text + "\n## My notes\n\nTrained on my data.\n")
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS))
    save_pretrained_atomically(model, adapter)
    text = (adapter / "README.md").read_text()
    assert text.count("# NeFT adapter") == 1 and "Trained on my data." in text
    assert ModelCard.load(adapter / "README.md").data.tags.count("neft") == 1


def test_card_code_loads_the_adapter_and_fails_as_documented_without_the_import(tmp_path):
    """Runs the card's own Python block in a fresh process: without ``import peft_neft`` peft raises
    ``KeyError: 'NEFT'`` (what the card and README's troubleshooting say), with it the adapter loads."""
    base_dir, adapter = _save_adapter(tmp_path)
    card_text = ModelCard.load(adapter / "README.md").text
    code = re.search(r"```python\n(.*?)```", card_text, re.S).group(1)
    code = code.replace("ADAPTER_DIR", str(adapter)).replace('"BASE_MODEL"', repr(str(base_dir)))
    without_import = "\n".join(line for line in code.splitlines() if not line.startswith("import peft_neft"))
    assert without_import != code
    script = (
        "try:\n" + "".join(f"    {line}\n" for line in without_import.splitlines())
        + "except KeyError as err:\n    print('without import:', repr(err))\n"
        + code + "\nprint('with import:', model.active_peft_config.peft_type.value)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "without import: KeyError('NEFT')" in result.stdout
    assert "with import: NEFT" in result.stdout
