"""Loading a model to analyse: a transformers folder, ``"default"``, or a saved peft/NeFT adapter folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..embedded_model import load_model_and_tokenizer


def load_analysis_model(spec: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``spec`` as a plain model: an adapter folder is applied to its base model and merged."""
    path = Path(spec)
    adapter_config = path / "adapter_config.json"
    if str(spec) != "default" and not path.exists():
        raise FileNotFoundError(
            f"Model {os.fspath(spec)!r} not found: pass a transformers model folder, a saved adapter folder, "
            "or 'default' for the embedded SmolLM2."
        )
    if not adapter_config.is_file():
        model, tokenizer = load_model_and_tokenizer(None if str(spec) == "default" else spec)
        return model.eval(), tokenizer
    from peft import PeftModel

    try:
        config = json.loads(adapter_config.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{adapter_config} is not valid JSON ({err}); the adapter folder is corrupt. Save the "
                         "adapter again.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{adapter_config} must hold a JSON object, got a {type(config).__name__}; the adapter "
                         "folder is corrupt. Save the adapter again.")
    base_name = config.get("base_model_name_or_path") or None
    base, tokenizer = load_model_and_tokenizer(base_name)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    return model.eval(), tokenizer
