"""Gradient checkpointing with a frozen base: NeFT deltas get the same gradients as without it."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_neft import NeFTConfig

from conftest import make_tiny_llama

# Deltas in the first block too: with a frozen embedding, reentrant checkpointing of block 0 yields
# gradients only because enable_input_require_grads makes the embedding output require grad.
NEURONS = {
    "model.layers.0.self_attn.q_proj": [1, 2],
    "model.layers.0.mlp.up_proj": [3, 40],
    "model.layers.1.self_attn.o_proj": [0, 31],
    "model.layers.2.mlp.down_proj": [0, 5],
}


def _model(checkpointing: bool, use_reentrant: bool = False):
    model = get_peft_model(make_tiny_llama(layers=3), NeFTConfig(neurons=NEURONS))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model.enable_input_require_grads()
    return model.train()


def _delta_grads(model) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of the deltas after one loss, and how often block 0's NeFT layer ran forward."""
    calls = []
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    handle = layer.register_forward_hook(lambda *_: calls.append(1))
    input_ids = torch.randint(0, 128, (3, 10), generator=torch.Generator().manual_seed(1))
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    handle.remove()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpointed_gradients_equal_plain_gradients(use_reentrant):
    reference, plain_calls = _delta_grads(_model(checkpointing=False))
    model = _model(checkpointing=True, use_reentrant=use_reentrant)
    grads, checkpointed_calls = _delta_grads(model)

    assert model.base_model.model.is_gradient_checkpointing
    assert (plain_calls, checkpointed_calls) == (1, 2)  # block 0 really was recomputed in backward
    assert sorted(grads) == sorted(reference) and len(grads) == len(NEURONS)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reached {name}"
        torch.testing.assert_close(grad, reference[name], msg=name)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

