"""Shared fixtures: a tiny Llama built from a config, and the real SmolLM2-135M / shared data."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach a model hub: everything they load is built here or read from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import peft_neft  # noqa: F401  (registers NeFT with peft)

SHARED_DATA = Path(os.environ.get("PEFT_NEFT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def put_in_hub_cache(hub_cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder``'s files out as huggingface_hub caches a download of ``repo_id`` (its ``main`` revision), so
    that a process with ``HF_HUB_CACHE=hub_cache`` and ``HF_HUB_OFFLINE=1`` loads ``repo_id`` from it."""
    revision = "0" * 40
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in Path(folder).iterdir():
        if file.is_file():
            (snapshot / file.name).symlink_to(file.resolve())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def make_tiny_llama(seed: int = 0, hidden: int = 32, intermediate: int = 64, layers: int = 2, vocab: int = 128):
    """A randomly initialised Llama small enough for exact, fast unit tests."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def smollm2_dir():
    """The embedded SmolLM2-135M-Instruct, converted once and cached."""
    from peft_neft.embedded_model import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA}")
    return SHARED_DATA


def make_tiny_tokenizer():
    """A word-level tokenizer for the tiny Llama's 128 ids: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, ``n0``..``n124``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"n{i}": i + 3 for i in range(125)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
