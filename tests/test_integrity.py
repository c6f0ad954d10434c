"""Adapter weights carry a sha256 per tensor: a flipped byte in tensor data is refused on load; plain peft files,
without checksums, still load."""

import json
import struct

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors import safe_open

from peft_neft import NeFTConfig, export_lora, import_lora, save_pretrained_atomically
from peft_neft.tuner.integrity import METADATA_KEY

from conftest import make_tiny_llama

WEIGHTS = "adapter_model.safetensors"
ROWS = {"model.layers.0.mlp.up_proj": [1, 2, 3], "model.layers.1.mlp.down_proj": [0, 5]}


def _adapter():
    return get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS, init_weights=False, init_seed=1)).eval()


def _flip_last_data_byte(path):
    """Flip one bit of the last byte of tensor data (after safetensors' 8-byte length and JSON header)."""
    data = bytearray(path.read_bytes())
    (header,) = struct.unpack("<Q", data[:8])
    assert len(data) > 8 + header
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _stored(path):
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[METADATA_KEY]), set(handle.keys())


def test_the_atomic_save_stores_a_checksum_of_each_tensor_and_loads_it(tmp_path):
    model = _adapter()
    save_pretrained_atomically(model, tmp_path / "a")
    checksums, keys = _stored(tmp_path / "a" / WEIGHTS)
    assert set(checksums) == keys and all(len(v) == 64 for v in checksums.values())
    x = torch.tensor([[5, 6, 7]])
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "a").eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, model(input_ids=x).logits)


def test_a_flipped_byte_in_tensor_data_is_refused_on_load(tmp_path):
    save_pretrained_atomically(_adapter(), tmp_path / "a")
    weights = tmp_path / "a" / WEIGHTS
    _flip_last_data_byte(weights)
    for load in (lambda: PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "a"),
                 lambda: export_lora(tmp_path / "a", tmp_path / "lora", base=make_tiny_llama())):
        with pytest.raises(ValueError, match="does not match the sha256 saved with it") as info:
            load()
        assert str(weights) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "lora").exists()


def test_plain_peft_files_without_checksums_still_load(tmp_path):
    model = _adapter()
    model.save_pretrained(tmp_path / "plain")  # peft's own save: no checksums
    with safe_open(str(tmp_path / "plain" / WEIGHTS), framework="pt") as handle:
        assert METADATA_KEY not in (handle.metadata() or {})
    PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "plain")
    export_lora(tmp_path / "plain", tmp_path / "lora", base=make_tiny_llama())


def test_export_and_import_write_checksums_and_check_them(tmp_path):
    save_pretrained_atomically(_adapter(), tmp_path / "a")
    export_lora(tmp_path / "a", tmp_path / "lora", base=make_tiny_llama())
    checksums, keys = _stored(tmp_path / "lora" / WEIGHTS)
    assert set(checksums) == keys
    import_lora(tmp_path / "lora", tmp_path / "back")
    assert set(_stored(tmp_path / "back" / WEIGHTS)[0]) == _stored(tmp_path / "back" / WEIGHTS)[1]
    _flip_last_data_byte(tmp_path / "lora" / WEIGHTS)
    with pytest.raises(ValueError, match="does not match the sha256"):
        import_lora(tmp_path / "lora", tmp_path / "again")
