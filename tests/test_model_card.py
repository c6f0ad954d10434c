"""A saved NeFT adapter carries a model card that says how to load it, and its instructions work."""

import os
import re
import subprocess
import sys

from huggingface_hub import ModelCard
from peft import __version__ as peft_version
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from peft_neft import NeFTConfig
from peft_neft.tuner.model_card import HEADING

from conftest import make_tiny_llama

ROWS = {"model.layers.0.mlp.up_proj": [1, 9], "model.layers.1.mlp.down_proj": [4]}


def _save_adapter(tmp_path):
    base_dir = tmp_path / "base"
    make_tiny_llama().save_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), NeFTConfig(neurons=ROWS))
    model.save_pretrained(tmp_path / "adapter")
    return base_dir, tmp_path / "adapter"


def test_card_metadata_and_loading_instructions(tmp_path):
    base_dir, adapter = _save_adapter(tmp_path)
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft"
    assert "neft" in card.data.tags
    assert card.data.base_model == str(base_dir)
    assert "pip install peft-neft" in card.text
    assert card.text.index("import peft_neft") < card.text.index("PeftModel.from_pretrained(")
    assert "peft-neft export-lora ADAPTER_DIR OUT_DIR" in card.text
    assert f"- PEFT {peft_version}" in card.text  # peft's own card content is kept


def test_saving_again_keeps_one_loading_section(tmp_path):
    _, adapter = _save_adapter(tmp_path)
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS))
    model.save_pretrained(adapter)
    text = (adapter / "README.md").read_text()
    assert text.count(HEADING) == 1
    assert ModelCard.load(adapter / "README.md").data.tags.count("neft") == 1


def test_card_code_loads_the_adapter_and_fails_as_documented_without_the_import(tmp_path):
    """Runs the card's own Python block in a fresh process: without ``import peft_neft`` peft raises
    ``KeyError: 'NEFT'`` (what the card and README's troubleshooting say), with it the adapter loads."""
    base_dir, adapter = _save_adapter(tmp_path)
    card_text = ModelCard.load(adapter / "README.md").text
    code = re.search(r"```python\n(.*?)```", card_text, re.S).group(1).replace("ADAPTER_DIR", str(adapter))
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
