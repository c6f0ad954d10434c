"""What NeFT keeps for backward: x, the delta and the index, never a weight-sized tensor of its own.

Structure, not timings: saved tensors are seen through ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import pytest
import torch
from peft import ShiraConfig, get_peft_model
from torch import nn

from peft_neft import NeFTConfig
from peft_neft.tuner.layer import NeFTLayer

UP_DOWN = ("up_proj", "down_proj")


def _saved_during(fn) -> list[torch.Tensor]:
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return saved, out


def _rows_for(model: nn.Module, suffixes: tuple[str, ...]) -> dict[str, list[int]]:
    return {name: list(range(1, m.out_features, 5)) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in suffixes}


def _weight_sized_copies(model: nn.Module, saved: list[torch.Tensor], min_numel: int) -> list[tuple]:
    """Saved tensors at least as large as the smallest adapted weight that are not (views of) a model parameter."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    dense = [t for t in saved if t.layout == torch.strided]
    return [tuple(t.shape) for t in dense if t.numel() >= min_numel and t.untyped_storage().data_ptr() not in params]


def _inputs(model: nn.Module) -> torch.Tensor:
    # Three tokens: every activation is far smaller than any adapted weight, so size tells them apart.
    ids = torch.tensor([[5, 17, 42]])
    return model.get_input_embeddings()(ids).detach().requires_grad_()


@pytest.mark.parametrize("suffixes", [UP_DOWN, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")])
def test_neft_model_saves_no_weight_sized_tensor_and_gives_no_weight_grad(tiny_llama, suffixes):
    model = get_peft_model(tiny_llama, NeFTConfig(neurons=_rows_for(tiny_llama, suffixes)))
    layers = [m for m in model.modules() if isinstance(m, NeFTLayer)]
    min_numel = min(m.get_base_layer().weight.numel() for m in layers)
    embeds = _inputs(model)
    saved, out = _saved_during(lambda: model(inputs_embeds=embeds).logits)
    assert _weight_sized_copies(model, saved, min_numel) == []
    out.square().sum().backward()
    for layer in layers:
        assert layer.get_base_layer().weight.grad is None
        delta = layer.neft_delta["default"]
        assert delta.grad is not None and delta.grad.shape == delta.shape
    assert all(p.grad is None for n, p in model.named_parameters() if "neft_delta" not in n)


def test_the_check_catches_shira_s_dense_weight_copy(tiny_llama):
    """The same check flags peft's SHiRA, which builds ``W + scatter(values)`` every forward."""
    model = get_peft_model(tiny_llama, ShiraConfig(r=2, target_modules=list(UP_DOWN)))
    min_numel = min(m.weight.numel() for n, m in tiny_llama.named_modules() if n.endswith("up_proj.base_layer"))
    embeds = _inputs(model)
    saved, _ = _saved_during(lambda: model(inputs_embeds=embeds).logits)
    assert len(_weight_sized_copies(model, saved, min_numel)) >= 2 * tiny_llama.config.num_hidden_layers


@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_layer_saves_exactly_x_weight_reference_delta_and_rows(tiny_llama, x_requires_grad):
    model = get_peft_model(tiny_llama, NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [3, 17, 40]}))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    x = torch.randn(2, 3, 32, requires_grad=x_requires_grad)
    saved, out = _saved_during(lambda: layer(x))
    weight, delta, rows = layer.base_layer.weight, layer.neft_delta["default"], layer.neft_rows["default"]
    expected = [x, delta, rows] + ([weight] if x_requires_grad else [])
    assert sorted(t.data_ptr() for t in saved) == sorted(t.data_ptr() for t in expected)
    out.sum().backward()
    assert weight.grad is None
    assert (x.grad is not None) == x_requires_grad


def test_update_is_added_in_place_into_the_base_output(tiny_llama):
    """Forward allocates the output once: the row update does not copy the whole (tokens x out) output."""
    model = get_peft_model(tiny_llama, NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [3, 17, 40]}))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    x = torch.randn(4, 8, 32, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        layer(x)
    allocated = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
    output_bytes = 4 * 8 * 64 * 4
    # One output-sized allocation (the base GEMM); the update itself is (tokens x k), far smaller.
    assert sum(1 for b in allocated if b >= output_bytes) == 1
