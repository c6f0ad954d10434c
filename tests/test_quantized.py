"""NeFT on quantized bases: torchao int8 weight-only on CPU (CI), bitsandbytes 8/4-bit on CUDA.

The NeFT layer only adds ``x @ D^T`` into the selected rows of the base layer's *output*, so it never
dequantizes or touches the quantized weight; merging into a quantized weight is refused.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import peft_neft
from peft_neft.tuner import NeFTLayer

from conftest import make_tiny_llama

NEURONS = {
    "model.layers.0.mlp.up_proj": [1, 5, 9],
    "model.layers.0.self_attn.q_proj": [0, 7],
    "model.layers.1.mlp.gate_proj": [2, 3],
    "model.layers.1.mlp.down_proj": [4, 30],
}


def _quantized_tiny_llama(tmp_path, quantization_config, **load_kwargs):
    """A tiny Llama saved in float32 and loaded back through transformers' quantizer integration."""
    make_tiny_llama(hidden=64, intermediate=128).save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=quantization_config, **load_kwargs
    )
    return model.eval()


def _neft_layers(model) -> dict[str, NeFTLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, NeFTLayer)}


def _check_forward_adds_rows_to_base_output(model, device: str, adapter: str = "default") -> None:
    """Every NeFT layer's output is exactly its quantized base layer's output plus the row update."""
    for layer in _neft_layers(model).values():
        x = torch.randn(3, 5, layer.in_features, device=device).to(layer.get_base_layer().weight.device)
        x = x.to(torch.float16 if device == "cuda" else torch.float32)
        with torch.no_grad():
            base_out = layer.get_base_layer()(x)
            out = layer(x)
            delta = layer.neft_delta[adapter]
            update = torch.nn.functional.linear(x.to(delta.dtype), delta).to(base_out.dtype)
        expected = base_out.index_add(-1, layer.neft_rows[adapter], update)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        untouched = torch.ones(layer.out_features, dtype=torch.bool, device=out.device)
        untouched[layer.neft_rows[adapter]] = False
        assert torch.equal(out[..., untouched], base_out[..., untouched])


def _train(model, input_ids: torch.Tensor, steps: int = 3) -> list[float]:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


# --- torchao int8 weight-only: runs on CPU, in CI -------------------------------------------------------------


@pytest.fixture
def torchao_llama(tmp_path):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return _quantized_tiny_llama(tmp_path, TorchAoConfig(Int8WeightOnlyConfig()), dtype=torch.float32)


def _torchao_inner_tensors(weight) -> dict[str, torch.Tensor]:
    names, _ = weight.__tensor_flatten__()
    return {name: getattr(weight, name).clone() for name in names}


def test_torchao_base_is_really_quantized(torchao_llama):
    from torchao.utils import TorchAOBaseTensor

    weight = torchao_llama.model.layers[0].mlp.up_proj.weight
    assert isinstance(weight, TorchAOBaseTensor)
    assert weight.qdata.dtype == torch.int8


def test_torchao_forward_uses_only_the_quantized_base_output(torchao_llama):
    input_ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = torchao_llama(input_ids).logits
    model = get_peft_model(torchao_llama, peft_neft.NeFTConfig(neurons=NEURONS))
    assert set(_neft_layers(model)) == {"base_model.model." + name for name in NEURONS}
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, base_logits)  # zero deltas: the quantized model itself
    model.add_adapter("random", peft_neft.NeFTConfig(neurons=NEURONS, init_weights=False, init_seed=0))
    model.set_adapter("random")
    _check_forward_adds_rows_to_base_output(model, "cpu", "random")
    with torch.no_grad():
        assert not torch.allclose(model(input_ids).logits, base_logits)


def test_torchao_training_updates_only_the_deltas(torchao_llama):
    model = get_peft_model(torchao_llama, peft_neft.NeFTConfig(neurons=NEURONS))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"base_model.model.{name}.neft_delta.default" for name in NEURONS}
    quantized = {name: layer.get_base_layer().weight for name, layer in _neft_layers(model).items()}
    inner_before = {name: _torchao_inner_tensors(w) for name, w in quantized.items()}
    frozen_before = {name: p.detach().clone() for name, p in model.named_parameters()
                     if not p.requires_grad and type(p) in (torch.Tensor, torch.nn.Parameter)}

    input_ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(1))
    losses = _train(model, input_ids)

    assert losses[-1] < losses[0]
    for name, layer in _neft_layers(model).items():
        assert layer.neft_delta["default"].abs().sum() > 0
        weight = layer.get_base_layer().weight
        assert weight is quantized[name]  # the quantized weight was neither replaced nor dequantized
        for inner, before in inner_before[name].items():
            assert torch.equal(getattr(weight, inner), before)
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name
    _check_gradients_against_the_dequantized_weight(model)


def _check_gradients_against_the_dequantized_weight(model) -> None:
    """Each layer's input and delta gradients are those of ``y = x W^T`` with rows ``R`` of ``W`` replaced by
    ``W[R] + D``, ``W`` the dequantized base weight (deltas trained, so the delta's part of ``grad_x`` counts)."""
    generator = torch.Generator().manual_seed(2)
    for name, layer in _neft_layers(model).items():
        delta, rows = layer.neft_delta["default"], layer.neft_rows["default"]
        assert delta.abs().sum() > 0
        x = torch.randn(2, 3, layer.in_features, generator=generator, requires_grad=True)
        g = torch.randn(2, 3, layer.out_features, generator=generator)
        delta.grad = None
        layer(x).backward(g)
        dense = layer.get_base_layer().weight.dequantize().float().clone()
        dense[rows] += delta.detach()
        torch.testing.assert_close(x.grad, g @ dense, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(delta.grad, g[..., rows].reshape(-1, rows.numel()).T @ x.detach().reshape(-1, x.shape[-1]),
                                   rtol=1e-4, atol=1e-5)


def test_torchao_merge_is_refused_with_a_clear_message(torchao_llama):
    model = get_peft_model(torchao_llama, peft_neft.NeFTConfig(neurons=NEURONS, init_weights=False, init_seed=0))
    input_ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(input_ids).logits
    with pytest.raises(NotImplementedError, match=r"torchao Int8Tensor.*Keep the adapter unmerged"):
        model.merge_and_unload()
    with pytest.raises(NotImplementedError, match="quantized base"):
        model.merge_adapter()
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, before)  # the refused merge changed nothing


def test_adapter_trained_on_torchao_base_merges_into_the_float_base(torchao_llama, tmp_path):
    """The documented way to merge: load the adapter onto the float base model and merge there."""
    model = get_peft_model(torchao_llama, peft_neft.NeFTConfig(neurons=NEURONS))
    _train(model, torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(3)))
    model.save_pretrained(tmp_path / "adapter")

    float_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    loaded = PeftModel.from_pretrained(float_base, tmp_path / "adapter")
    for name, layer in _neft_layers(loaded).items():
        trained = _neft_layers(model)[name]
        assert torch.equal(layer.neft_delta["default"], trained.neft_delta["default"])
        assert torch.equal(layer.neft_rows["default"], trained.neft_rows["default"])
    input_ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        unmerged = loaded(input_ids).logits
        merged = loaded.merge_and_unload()(input_ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


# --- bitsandbytes 8-bit and 4-bit: CUDA only ------------------------------------------------------------------


@pytest.fixture(params=["8bit", "4bit"])
def bnb_llama(request, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("bitsandbytes quantization needs a CUDA GPU")
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    if request.param == "8bit":
        config, layer_cls = BitsAndBytesConfig(load_in_8bit=True), bnb.nn.Linear8bitLt
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
        layer_cls = bnb.nn.Linear4bit
    model = _quantized_tiny_llama(tmp_path, config, dtype=torch.float16, device_map={"": 0})
    assert isinstance(model.model.layers[0].mlp.up_proj, layer_cls)
    return model


def test_bnb_forward_training_and_merge(bnb_llama):
    input_ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        base_logits = bnb_llama(input_ids).logits
    model = get_peft_model(bnb_llama, peft_neft.NeFTConfig(neurons=NEURONS))
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, base_logits)

    weights = {name: layer.get_base_layer().weight for name, layer in _neft_layers(model).items()}
    stored = {name: w.detach().clone() for name, w in weights.items()}
    losses = _train(model, input_ids)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    for name, layer in _neft_layers(model).items():
        assert layer.neft_delta["default"].dtype == torch.float32
        assert layer.neft_delta["default"].abs().sum() > 0
        assert layer.get_base_layer().weight is weights[name]
        assert torch.equal(layer.get_base_layer().weight, stored[name])

    model.eval()
    _check_forward_adds_rows_to_base_output(model, "cuda")
    with pytest.raises(NotImplementedError, match="quantized base"):
        model.merge_and_unload()


def test_torchao_base_accepts_a_selection_made_on_its_float_model(torchao_llama):
    from peft_neft.selection import NeuronSelection
    from peft_neft.tuner.fingerprint import model_fingerprint

    float_model = make_tiny_llama(hidden=64, intermediate=128)
    selection = NeuronSelection(rows={k: torch.tensor(v) for k, v in NEURONS.items()},
                                metadata={"fingerprint": model_fingerprint(float_model)})
    model = get_peft_model(torchao_llama, peft_neft.NeFTConfig.from_selection(selection))
    assert set(_neft_layers(model)) == {"base_model.model." + name for name in NEURONS}
    with pytest.raises(ValueError, match="other weight shapes"):
        get_peft_model(make_tiny_llama(hidden=64, intermediate=96), peft_neft.NeFTConfig.from_selection(selection))
