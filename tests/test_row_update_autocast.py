"""NeFT's row update under bf16 autocast: products in bf16, float32 delta gradients in the right direction."""

import torch
from peft import get_peft_model
from torch.nn import functional as F

from peft_neft import NeFTConfig
from peft_neft.tuner.row_update import add_rows_, linear_with_rows

from conftest import make_tiny_llama

ROWS = {"model.layers.0.mlp.up_proj": [3, 17, 40], "model.layers.1.mlp.down_proj": [0, 31],
        "model.layers.1.self_attn.q_proj": [5]}


def _reference(x, weight, delta, rows):
    """The same maths with autograd's own ops: base output plus ``x @ D^T`` in columns ``rows``."""
    out = F.linear(x, weight)
    return out.index_add(-1, rows, F.linear(x, delta).to(out.dtype))


def _grads(fn, x, weight, delta, rows):
    x, delta = x.clone().requires_grad_(True), delta.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x, weight, delta, rows)
    out.float().pow(2).sum().backward()
    return out, x.grad, delta.grad


def test_add_rows_under_autocast_matches_autograd_in_bf16():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 16, generator=gen).to(torch.bfloat16)
    weight = torch.randn(12, 16, generator=gen).to(torch.bfloat16)
    delta = torch.randn(3, 16, generator=gen)  # float32 and non-zero, as a trained delta is
    rows = torch.tensor([1, 5, 9])
    ours = _grads(lambda x, w, d, r: add_rows_(F.linear(x, w), x, d, r), x, weight, delta, rows)
    ref = _grads(_reference, x, weight, delta, rows)
    assert ours[0].dtype == ref[0].dtype == torch.bfloat16
    torch.testing.assert_close(ours[0], ref[0])
    assert ours[2].dtype == torch.float32 and ours[1].dtype == torch.bfloat16
    assert ours[2].abs().min() > 0
    # Same bf16 products in backward as autograd's (a float32 backward differs by ~0.5 here).
    assert torch.equal(ours[1], ref[1])
    assert torch.equal(ours[2], ref[2])


def test_the_delta_product_runs_in_bf16_not_float32():
    """bf16 rounding of x @ D^T shows in the output: it equals the bf16 product, not the float32 one."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 64, generator=gen).to(torch.bfloat16)
    delta = torch.randn(4, 64, generator=gen)
    rows = torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = add_rows_(torch.zeros(8, 4, dtype=torch.bfloat16), x, delta, rows)
    in_bf16 = F.linear(x, delta.to(torch.bfloat16))
    assert torch.equal(out, in_bf16)
    # The fused path without autocast keeps the float32 product (the tight fp32 equivalence holds there).
    out32 = linear_with_rows(x.float(), torch.zeros(4, 64), None, delta, rows)
    torch.testing.assert_close(out32, F.linear(x.float(), delta), rtol=1e-6, atol=1e-6)


def test_bf16_autocast_delta_gradients_point_where_the_float32_ones_do():
    grads = []
    for autocast in (False, True):
        # non-zero deltas: the delta's own part of the graph is exercised
        model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS, init_weights=False, init_seed=3))
        ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[1].items():
        ref = grads[0][name]
        assert grad.dtype == torch.float32 and grad.abs().sum() > 0, name
        cosine = F.cosine_similarity(grad.flatten(), ref.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
        assert abs(grad.norm() / ref.norm() - 1) < 0.05, name
