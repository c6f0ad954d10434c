"""NeFT training equals the paper's Algorithm 1: full weights trained with unselected rows' gradients zeroed."""

import pytest
import torch
from peft import get_peft_model

from peft_neft import NeFTConfig

from conftest import make_tiny_llama

SELECTION = {
    "model.layers.0.mlp.up_proj": [1, 7, 30, 63],
    "model.layers.0.mlp.gate_proj": [0, 5],
    "model.layers.0.mlp.down_proj": [2, 3, 31],
    "model.layers.1.mlp.down_proj": [10],
    "model.layers.1.self_attn.q_proj": [4, 8, 9],
    "model.layers.1.self_attn.o_proj": [0, 31],
}
STEPS = 6


def _batches():
    generator = torch.Generator().manual_seed(123)
    return [torch.randint(0, 128, (4, 10), generator=generator) for _ in range(STEPS)]


def _optimizer(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.5)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)


def _train_masked_full(optimizer_name):
    """The paper's way: train the target weights, zeroing the gradient of every unselected row."""
    model = make_tiny_llama().train()
    modules = dict(model.named_modules())
    model.requires_grad_(False)
    masks = {}
    for name, rows in SELECTION.items():
        weight = modules[name].weight
        weight.requires_grad_(True)
        mask = torch.zeros(weight.shape[0], 1)
        mask[rows] = 1.0
        masks[weight] = mask
    optimizer = _optimizer(optimizer_name, list(masks))
    for ids in _batches():
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        for weight, mask in masks.items():
            weight.grad.mul_(mask)
        optimizer.step()
    return {name: modules[name].weight.detach() for name in SELECTION}


def _train_neft(optimizer_name):
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=SELECTION)).train()
    optimizer = _optimizer(optimizer_name, [p for p in model.parameters() if p.requires_grad])
    for ids in _batches():
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    merged = model.merge_and_unload()
    modules = dict(merged.named_modules())
    return {name: modules[name].weight.detach() for name in SELECTION}


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_neft_matches_gradient_masked_full_training(optimizer_name):
    original = {name: dict(make_tiny_llama().named_modules())[name].weight.detach() for name in SELECTION}
    reference = _train_masked_full(optimizer_name)
    neft = _train_neft(optimizer_name)
    for name, rows in SELECTION.items():
        unselected = torch.ones(original[name].shape[0], dtype=torch.bool)
        unselected[rows] = False
        # The selected rows moved, and by the same amount as under gradient masking ...
        assert not torch.allclose(reference[name][rows], original[name][rows])
        torch.testing.assert_close(neft[name], reference[name], rtol=1e-5, atol=1e-6)
        # ... and every other row is untouched, bit for bit.
        assert torch.equal(neft[name][unselected], original[name][unselected])
