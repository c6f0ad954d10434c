"""A saved NeFT adapter carries a model card its receiver can follow: Hub id or no base model at all (never a
local path), working install and loading instructions, the selection and the versions, no empty template."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from peft import __version__ as peft_version
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import peft_neft
from peft_neft import NeFTConfig, NeuronSelection, save_pretrained_atomically
from peft_neft._version import REPOSITORY
from peft_neft.embedded_model import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, cache_dir, hub_id
from peft_neft.adapters.model_card import TrainingRun

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
    assert f'pip install "peft-neft @ git+{REPOSITORY}"' in text and "/path/to" not in text
    assert f"[peft-neft]({REPOSITORY})" in text
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


def _no_template(text: str) -> None:
    assert "More Information Needed" not in text and "Model Card for Model ID" not in text
    assert "### Framework versions" not in text


def test_plain_save_pretrained_writes_the_neft_card(tmp_path):
    """peft's own ``model.save_pretrained`` (what every peft user calls) gets the card, not peft's blank template:
    it names peft-neft, the repository, how to load the adapter and what a receiver without the plugin sees."""
    model = get_peft_model(make_tiny_llama(), NeFTConfig.from_selection(SELECTION, task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path / "adapter")
    text = (tmp_path / "adapter" / "README.md").read_text()
    _no_template(text)
    assert "# NeFT adapter" in text and REPOSITORY in text and "import peft_neft" in text
    assert "KeyError: 'NEFT'" in text and "PeftModel.from_pretrained(base, \"ADAPTER_DIR\")" in text
    assert "- scorer: cosine (global)" in text
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert "peft-neft" in card.data.tags and card.data.pipeline_tag == "text-generation"


def test_plain_save_pretrained_of_several_adapters_gives_each_folder_its_card(tmp_path):
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS))
    model.add_adapter("other", NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [2]}))
    model.save_pretrained(tmp_path / "adapters")
    for folder in (tmp_path / "adapters", tmp_path / "adapters" / "other"):
        assert "# NeFT adapter" in (folder / "README.md").read_text()


RUN = TrainingRun(task="translation, English to French", instruction="Translate English to French.",
                  prompt="<|im_start|>system\nTranslate English to French.<|im_end|>\n<|im_start|>user\n{source}"
                         "<|im_end|>\n<|im_start|>assistant\n",
                  data="40 training, 8 validation and 10 test pairs", method="lora:8", seed=0, learning_rate=3e-3,
                  steps="80 of at most 80 steps", scores={"bleu": 12.345, "chrf": 40.0},
                  signatures={"bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.5.1"})


def test_a_lora_adapter_saved_by_the_project_gets_a_card_with_its_run_and_its_tokenizer(tmp_path):
    """compare's LoRA baseline: no blank template, the base's Hub id, plain peft loading, the exact prompt
    format, the scores with their signatures; the tokenizer (its chat template) beside it."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<eos>": 1}, "a")),
                                        eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    base = make_tiny_llama()
    base.name_or_path = DEFAULT_MODEL_HUB_ID
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    save_pretrained_atomically(model, tmp_path / "adapter", tokenizer=tokenizer, run=RUN)
    text = (tmp_path / "adapter" / "README.md").read_text()
    _no_template(text)
    assert "# LoRA adapter" in text and REPOSITORY in text and "peft-neft` is not needed" in text
    assert f'AutoModelForCausalLM.from_pretrained("{DEFAULT_MODEL_HUB_ID}")' in text
    assert "Q4_1 GGUF" in text  # what the embedded copy is, and that the Hub's weights differ
    assert "- task: translation, English to French" in text and RUN.prompt in text
    assert "- bleu: 12.35" in text and f"`{RUN.signatures['bleu']}`" in text
    assert "- rank 2, lora_alpha 8, target modules: q_proj" in text
    assert ModelCard.load(tmp_path / "adapter" / "README.md").data.base_model == DEFAULT_MODEL_HUB_ID
    assert AutoTokenizer.from_pretrained(tmp_path / "adapter").chat_template == tokenizer.chat_template


def test_the_repository_is_in_the_package_metadata():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    urls = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Repository"] == REPOSITORY
