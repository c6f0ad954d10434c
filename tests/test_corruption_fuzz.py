"""Corrupted adapter and selection files: loading round-trips exactly or raises this project's clear error.

Seeded random corruption: truncation, flipped bytes, dropped tensors. For adapter files the bytes are
flipped in the safetensors header (names, dtypes, shapes, offsets): peft writes those files and
safetensors keeps no checksum, so a flipped bit inside a delta's float data cannot be told from a
trained value. Selection files carry their own checksum, so there every byte may be flipped.
"""

from __future__ import annotations

import json
import random
import shutil
import struct

import pytest
import torch
from peft import PeftModel, get_peft_model

from conftest import make_tiny_llama
from peft_neft import NeFTConfig
from peft_neft.selection import NeuronSelection, score_models, select_neurons

ROWS = {"model.layers.0.mlp.up_proj": [1, 9, 33], "model.layers.1.mlp.down_proj": [4, 7], "model.layers.1.self_attn.k_proj": [0]}
CASES = 36


def _corrupt(data: bytes, header_only: bool, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip", "flip"])
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    start, end = (0, header_end) if header_only else (0, len(data))
    flipped = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        flipped[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
    return kind, bytes(flipped)


def _is_clear_error(err: BaseException) -> bool:
    message = str(err)
    return isinstance(err, (ValueError, FileNotFoundError)) and ("again" in message or "another" in message)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "adapter"
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(7)))
    model.save_pretrained(folder)
    return folder, {k: v.detach().clone() for k, v in model.state_dict().items() if "neft_" in k}


@pytest.mark.parametrize("seed", range(CASES))
def test_corrupted_adapter_file_loads_exactly_or_is_refused(adapter, tmp_path, seed):
    folder, expected = adapter
    rng = random.Random(seed)
    copy = tmp_path / "adapter"
    shutil.copytree(folder, copy)
    weights = copy / "adapter_model.safetensors"
    if seed % 4 == 3:  # drop one tensor
        import safetensors.torch

        tensors = safetensors.torch.load_file(weights)
        tensors.pop(rng.choice(sorted(tensors)))
        safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})
        kind = "drop"
    else:
        kind, data = _corrupt(weights.read_bytes(), header_only=True, rng=rng)
        weights.write_bytes(data)
    try:
        loaded = PeftModel.from_pretrained(make_tiny_llama(), copy)
    except Exception as err:  # noqa: BLE001  (the point is which exceptions escape)
        assert _is_clear_error(err), f"{kind}: unclear {type(err).__name__}: {err}"
        return
    state = {k: v for k, v in loaded.state_dict().items() if "neft_" in k}
    assert state.keys() == expected.keys(), kind
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), f"{kind} changed {key} silently"


@pytest.fixture(scope="module")
def selection_file(tmp_path_factory):
    model = make_tiny_llama()
    tuned = make_tiny_llama(seed=1)
    selection = select_neurons(score_models(model, tuned), num_neurons=12)
    path = tmp_path_factory.mktemp("fuzz") / "sel.safetensors"
    selection.save(path)
    return path, selection


@pytest.mark.parametrize("seed", range(CASES))
def test_corrupted_selection_file_loads_exactly_or_is_refused(selection_file, tmp_path, seed):
    path, expected = selection_file
    rng = random.Random(1000 + seed)
    copy = tmp_path / "sel.safetensors"
    if seed % 4 == 3:  # drop one tensor, keeping the rest of the file as written
        import safetensors.torch
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            header = handle.metadata()
        tensors = safetensors.torch.load_file(path)
        tensors.pop(rng.choice(sorted(tensors)))
        safetensors.torch.save_file(tensors, copy, metadata=header)
        kind = "drop"
    else:
        kind, data = _corrupt(path.read_bytes(), header_only=False, rng=rng)
        copy.write_bytes(data)
    try:
        loaded = NeuronSelection.load(copy)
    except Exception as err:  # noqa: BLE001
        assert _is_clear_error(err), f"{kind}: unclear {type(err).__name__}: {err}"
        return
    assert json.dumps(loaded.metadata, sort_keys=True) == json.dumps(expected.metadata, sort_keys=True), kind
    for mine, theirs in ((loaded.rows, expected.rows), (loaded.scores, expected.scores)):
        assert mine.keys() == theirs.keys(), kind
        assert all(mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]) for k in theirs), kind
