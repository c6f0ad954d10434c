"""NeFT under ``torch.compile``: forward and backward of a tiny Llama match eager mode."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from peft import get_peft_model

from peft_neft import NeFTConfig

from conftest import make_tiny_llama

_CXX = os.environ.get("CXX", "g++")
pytestmark = pytest.mark.skipif(
    shutil.which(_CXX) is None,
    reason=f"torch.compile's CPU backend (inductor) needs a C++ compiler and {_CXX!r} is not on PATH",
)

NEURONS = {
    "model.layers.0.mlp.up_proj": [1, 7, 30, 63],
    "model.layers.1.mlp.down_proj": [0, 5, 31],
    "model.layers.1.self_attn.q_proj": [2, 9],
}


def _model(seed: int = 0):
    return get_peft_model(make_tiny_llama(seed), NeFTConfig(neurons=NEURONS, init_weights=False, init_seed=seed))


def _forward_backward(model, ids, run=None):
    logits = (model if run is None else run)(input_ids=ids).logits
    logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def test_compiled_neft_matches_eager_outputs_and_grads():
    torch._dynamo.reset()
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    eager, compiled = _model(), _model()
    expected_logits, expected_grads = _forward_backward(eager, ids)
    logits, grads = _forward_backward(compiled, ids, run=torch.compile(compiled))
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(expected_grads) and len(grads) == len(NEURONS)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5)


def test_neft_layer_compiles_without_graph_breaks():
    torch._dynamo.reset()
    layer = _model().base_model.model.model.layers[0].mlp.up_proj
    x = torch.randn(2, 5, 32, requires_grad=True)
    expected = layer(x)
    (expected_x_grad,) = torch.autograd.grad(expected.square().sum(), x)
    out = torch.compile(layer, fullgraph=True)(x)
    (x_grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_grad, expected_x_grad, rtol=1e-5, atol=1e-6)
