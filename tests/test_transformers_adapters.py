"""NeFT through transformers' own adapter API (model.add_adapter, set_adapter, disable_adapters, load_adapter)."""

import pytest
import torch
from huggingface_hub import ModelCard
from packaging.version import Version
from peft import __version__ as peft_version
from transformers.integrations import peft as transformers_peft

from peft_neft import NeFTConfig, save_pretrained_atomically

from conftest import make_tiny_llama

NEEDED = Version(transformers_peft.MIN_PEFT_VERSION)

pytestmark = pytest.mark.skipif(
    Version(peft_version) < NEEDED,
    reason=f"this transformers needs peft>={NEEDED} for its adapter API, peft {peft_version} is installed; "
           "pyproject.toml excludes the pair (pip install -e . picks a matching transformers)",
)


def test_add_set_and_disable_adapters():
    model = make_tiny_llama()
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    base = model(ids).logits
    model.add_adapter(NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 2]}, init_weights=False, init_seed=1), adapter_name="a")
    model.add_adapter(NeFTConfig(neurons={"model.layers.1.mlp.down_proj": [3]}, init_weights=False, init_seed=2), adapter_name="b")
    model.set_adapter("a")
    assert model.active_adapters() == ["a"]
    with_a = model(ids).logits
    model.set_adapter("b")
    assert model.active_adapters() == ["b"]
    with_b = model(ids).logits
    model.disable_adapters()
    assert torch.equal(model(ids).logits, base)
    assert not torch.equal(with_a, base) and not torch.equal(with_a, with_b)


def test_save_and_load_adapter_round_trip_with_model_card(tmp_path):
    model = make_tiny_llama()
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    model.add_adapter(NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 2]}, init_weights=False, init_seed=1))
    expected = model(ids).logits
    model.save_pretrained(tmp_path / "adapter")
    save_pretrained_atomically(model, tmp_path / "atomic")  # the same files, written atomically
    for folder in ("adapter", "atomic"):  # transformers' own save gets the NeFT card too (NeFTConfig's save hook)
        assert "neft" in ModelCard.load(tmp_path / folder / "README.md").data.tags
    assert sorted(p.name for p in (tmp_path / "atomic").iterdir()) == sorted(
        p.name for p in (tmp_path / "adapter").iterdir())
    fresh = make_tiny_llama()
    fresh.load_adapter(str(tmp_path / "adapter"))
    assert torch.equal(fresh(ids).logits, expected)


def test_deltas_take_the_base_dtype_as_loras_do_unless_delta_dtype_is_given():
    # transformers' add_adapter calls no autocast_adapter_dtype: peft's adapters take the base's dtype there.
    model = make_tiny_llama().to(torch.bfloat16)
    model.add_adapter(NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 2]}), adapter_name="follows")
    model.add_adapter(NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [3]}, delta_dtype="float32"),
                      adapter_name="explicit")
    deltas = model.model.layers[0].mlp.up_proj.neft_delta
    assert deltas["follows"].dtype == torch.bfloat16 and deltas["explicit"].dtype == torch.float32
