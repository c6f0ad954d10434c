"""The NeFT layer: exact parameter counts, forward semantics, memory structure and clear errors."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from peft_neft import NeFTConfig, NeuronSelection
from peft_neft.tuner.layer import Linear as NeFTLinear

from conftest import make_tiny_llama

ROWS = {
    "model.layers.0.mlp.up_proj": [3, 17, 40],
    "model.layers.1.mlp.down_proj": [0, 31],
    "model.layers.1.self_attn.q_proj": [5],
}


def _ids(batch=2, seq=6, vocab=128, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_trainable_parameters_are_exactly_rows_times_in_features(tiny_llama):
    model = get_peft_model(tiny_llama, NeFTConfig(neurons=ROWS))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 3 * 32 + 2 * 64 + 1 * 32
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".neft_delta." in n for n in names) and len(names) == 3


def test_forward_adds_x_times_delta_into_the_selected_rows_only(tiny_llama):
    base_up = tiny_llama.model.layers[0].mlp.up_proj
    weight = base_up.weight.detach().clone()
    model = get_peft_model(tiny_llama, NeFTConfig(neurons=ROWS, init_weights=False, init_seed=1))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert isinstance(layer, NeFTLinear)
    x = torch.randn(2, 5, 32)
    expected_weight = weight.clone()
    expected_weight[[3, 17, 40]] += layer.neft_delta["default"].detach()
    torch.testing.assert_close(layer(x), x @ expected_weight.T, rtol=1e-5, atol=1e-5)


def test_zero_initialised_adapter_leaves_outputs_unchanged(tiny_llama):
    ids = _ids()
    before = tiny_llama(input_ids=ids).logits
    model = get_peft_model(tiny_llama, NeFTConfig(neurons=ROWS))
    torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_backward_gives_no_weight_grad_and_saves_no_weight_sized_tensor(tiny_llama):
    model = get_peft_model(tiny_llama, NeFTConfig(neurons=ROWS))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    weight_numel = layer.base_layer.weight.numel()
    saved_numels = []

    def pack(tensor):
        saved_numels.append(tensor.numel())
        return tensor

    x = torch.randn(1, 3, 32)  # 96 input values; the weight has 2048
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    out.sum().backward()
    assert layer.base_layer.weight.grad is None
    assert layer.neft_delta["default"].grad.shape == (3, 32)
    assert saved_numels and max(saved_numels) < weight_numel


def test_gradient_of_delta_is_output_grad_rows_times_input(tiny_llama):
    model = get_peft_model(tiny_llama, NeFTConfig(neurons=ROWS))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    x = torch.randn(2, 4, 32)
    upstream = torch.randn(2, 4, 64)
    (layer(x) * upstream).sum().backward()
    expected = upstream[..., [3, 17, 40]].reshape(-1, 3).T @ x.reshape(-1, 32)
    torch.testing.assert_close(layer.neft_delta["default"].grad, expected, rtol=1e-5, atol=1e-5)


def test_conv1d_neurons_are_columns_of_the_stored_weight():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64, n_positions=16)).eval()
    conv = gpt2.transformer.h[0].mlp.c_fc  # Conv1D: weight stored (in=32, out=128)
    weight = conv.weight.detach().clone()
    bias = conv.bias.detach().clone()
    model = get_peft_model(gpt2, NeFTConfig(neurons={"transformer.h.0.mlp.c_fc": [2, 100]}, init_weights=False, init_seed=1))
    assert model.get_nb_trainable_parameters()[0] == 2 * 32
    layer = model.base_model.model.transformer.h[0].mlp.c_fc
    x = torch.randn(3, 32)
    expected_weight = weight.clone()
    expected_weight[:, [2, 100]] += layer.neft_delta["default"].detach().T
    torch.testing.assert_close(layer(x), x @ expected_weight + bias, rtol=1e-5, atol=1e-5)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged.transformer.h[0].mlp.c_fc.weight, expected_weight)


def test_from_selection_takes_rows_fingerprint_and_provenance_and_neurons_takes_only_a_dict(tmp_path):
    selection = NeuronSelection(rows={k: torch.tensor(v) for k, v in ROWS.items()},
                                metadata={"fingerprint": "abc", "method": "cosine", "budget": {"unit": "params",
                                                                                               "value": 96}})
    selection.save(tmp_path / "sel.safetensors")
    for source in (selection, NeuronSelection.load(tmp_path / "sel.safetensors")):
        config = NeFTConfig.from_selection(source, delta_dtype="bfloat16")
        assert config.neuron_counts == {k: len(v) for k, v in ROWS.items()}
        assert config.selection_fingerprint == "abc" and config.delta_dtype == "bfloat16"
        assert config.selection_provenance == {"method": "cosine", "budget": {"unit": "params", "value": 96}}
    for spec in (selection, tmp_path / "sel.safetensors", str(tmp_path / "sel.safetensors")):
        with pytest.raises(TypeError, match=r"must be a dict module name -> rows.*NeFTConfig.from_selection"):
            NeFTConfig(neurons=spec)
    with pytest.raises(TypeError, match=r"pass NeuronSelection.load\(path\)"):
        NeFTConfig.from_selection(str(tmp_path / "sel.safetensors"))


@pytest.mark.parametrize("spelled", [
    {"model.layers.0.mlp.up_proj": [1], "base_model.model.model.layers.0.mlp.up_proj": [2]},
    {"base_model.model.model.layers.0.mlp.up_proj": [2], "model.layers.0.mlp.up_proj": [1]},
])
def test_one_module_spelled_twice_is_refused_whatever_the_order(spelled):
    with pytest.raises(ValueError, match=r"names module 'model.layers.0.mlp.up_proj' twice .*Keep one entry"):
        NeFTConfig(neurons=spelled)
    with pytest.raises(ValueError, match=r"names module 'model.layers.0.mlp.up_proj' twice"):
        NeFTConfig(neuron_counts={name: len(rows) for name, rows in spelled.items()})


def _up_delta(model, adapter="default"):
    return model.base_model.model.model.layers[0].mlp.up_proj.neft_delta[adapter].detach().clone()


def test_init_weights_zeros_by_default_and_random_from_torchs_generator():
    assert torch.count_nonzero(_up_delta(get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS)))) == 0
    torch.manual_seed(5)
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS, init_weights=False), adapter_name="a")
    model.add_adapter("b", NeFTConfig(neurons=ROWS, init_weights=False))
    first, second = _up_delta(model, "a"), _up_delta(model, "b")
    assert first.std().item() == pytest.approx(0.1, rel=0.5)
    assert not torch.equal(first, second)  # two random adapters from one config differ, as peft's do
    torch.manual_seed(5)
    again = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS, init_weights=False), adapter_name="a")
    assert torch.equal(_up_delta(again, "a"), first)  # torch.manual_seed controls them


def test_init_seed_gives_each_module_its_own_reproducible_start():
    def delta(seed, base_seed=0, rows=ROWS):
        config = NeFTConfig(neurons=rows, init_weights=False, init_seed=seed)
        return _up_delta(get_peft_model(make_tiny_llama(base_seed), config))

    random = delta(7)
    assert torch.equal(random, delta(7, base_seed=1))  # whatever the base weights and torch's generator
    one_module = {"model.layers.0.mlp.up_proj": ROWS["model.layers.0.mlp.up_proj"]}
    assert torch.equal(random, delta(7, rows=one_module))  # and whatever else is selected
    assert not torch.equal(random, delta(8))


@pytest.mark.parametrize("kwargs, message", [
    ({"init_weights": 7}, r"init_weights must be True \(zeros\) or False \(random\), got 7\. For seeded random "
                          r"deltas pass init_weights=False, init_seed=7"),
    ({"init_weights": "zeros"}, "init_weights must be True"),
    ({"init_weights": False, "init_seed": -1}, "init_seed must be a non-negative int"),
    ({"init_weights": False, "init_seed": 0.5}, "init_seed must be a non-negative int"),
    ({"init_seed": 3}, "init_seed seeds random deltas, but init_weights=True"),
])
def test_bad_init_options_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NeFTConfig(neurons=ROWS, **kwargs)


def test_target_modules_filters_and_rejects_outside_modules():
    config = NeFTConfig(target_modules=["up_proj", "down_proj", "q_proj"], neurons=ROWS)
    assert config.target_modules == sorted(ROWS)
    with pytest.raises(ValueError, match="do not match target_modules"):
        NeFTConfig(target_modules=["up_proj"], neurons=ROWS)


def test_peft_model_prefixed_names_are_accepted():
    config = NeFTConfig(neurons={"base_model.model.model.layers.0.mlp.up_proj": [1]})
    assert config.target_modules == ["model.layers.0.mlp.up_proj"]


@pytest.mark.parametrize(
    "rows, error, message",
    [
        ([1, 1, 2], ValueError, "duplicates"),
        ([-1, 2], ValueError, "negative"),
        ([1.5, 2.0], TypeError, "must be integers"),
        (["a"], TypeError, "sequence of ints"),
        ([], ValueError, "is empty"),
    ],
)
def test_bad_rows_are_rejected_with_the_module_named(rows, error, message):
    with pytest.raises(error, match=message) as info:
        NeFTConfig(neurons={"model.layers.0.mlp.up_proj": rows})
    assert "model.layers.0.mlp.up_proj" in str(info.value)


def test_config_without_selection_is_rejected():
    with pytest.raises(ValueError, match="needs a neuron selection"):
        NeFTConfig()
    with pytest.raises(ValueError, match="empty"):
        NeFTConfig(neurons={})


def test_rows_out_of_range_name_the_module_and_out_features(tiny_llama):
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.up_proj.*\[0, 64\)"):
        get_peft_model(tiny_llama, NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [64]}))


def test_unknown_module_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="does not have.*model.layers.7.mlp.up_proj"):
        get_peft_model(tiny_llama, NeFTConfig(neurons={"model.layers.7.mlp.up_proj": [1]}))


def test_non_linear_module_is_rejected(tiny_llama):
    with pytest.raises(TypeError, match="model.layers.0.input_layernorm.*LlamaRMSNorm"):
        get_peft_model(tiny_llama, NeFTConfig(neurons={"model.layers.0.input_layernorm": [1]}))


def test_model_follows_to_device_and_dtype_keeps_delta_dtype():
    model = get_peft_model(make_tiny_llama().to(torch.bfloat16), NeFTConfig(neurons=ROWS))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert layer.neft_delta["default"].dtype == torch.float32
    assert layer.neft_rows["default"].dtype == torch.int64
    out = model(input_ids=_ids(), labels=_ids())
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert layer.neft_delta["default"].grad.dtype == torch.float32
    model.to(torch.float64)  # the integer row indices are not cast with the floating-point weights
    assert layer.neft_rows["default"].dtype == torch.int64
    model.to("meta")  # the rows are a registered buffer: they follow the model to another device
    assert layer.neft_rows["default"].device.type == "meta" and layer.neft_delta["default"].device.type == "meta"


@pytest.mark.parametrize("base", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [True, False])
def test_delta_dtype_follows_peft_autocast_unless_given(base, autocast):
    model = get_peft_model(make_tiny_llama().to(base), NeFTConfig(neurons=ROWS), autocast_adapter_dtype=autocast)
    model.add_adapter("explicit", NeFTConfig(neurons=ROWS, delta_dtype="bfloat16"), autocast_adapter_dtype=autocast)
    assert _up_delta(model).dtype == (torch.float32 if autocast else base)  # peft's contract
    assert _up_delta(model, "explicit").dtype == torch.bfloat16  # the explicit choice wins
    with pytest.raises(ValueError, match="delta_dtype"):
        NeFTConfig(neurons=ROWS, delta_dtype="int8")


@pytest.mark.parametrize("base", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("delta_dtype", [None, "float32", "bfloat16"])
@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_loading_keeps_the_saved_deltas_bit_exact(tmp_path, base, delta_dtype, low_cpu_mem_usage):
    torch.manual_seed(0)
    config = NeFTConfig(neurons=ROWS, delta_dtype=delta_dtype, init_weights=False)
    saved = get_peft_model(make_tiny_llama().to(base), config)
    saved.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny_llama().to(base), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
    for name, delta in saved.named_parameters():
        if ".neft_delta." in name:
            again = loaded.get_parameter(name)
            assert again.dtype == delta.dtype == (torch.float32 if delta_dtype is None else config.torch_delta_dtype)
            assert torch.equal(again, delta)


def test_bf16_deltas_on_a_float32_model_compute_merged_and_unmerged_alike():
    torch.manual_seed(0)
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS, delta_dtype="bfloat16", init_weights=False))
    with torch.no_grad():
        unmerged = model(input_ids=_ids()).logits
        model.merge_adapter()
        merged = model(input_ids=_ids()).logits
    assert unmerged.dtype == torch.float32
    torch.testing.assert_close(unmerged, merged, atol=1e-5, rtol=1e-5)


def test_a_module_both_selected_and_in_modules_to_save_is_refused_by_name():
    with pytest.raises(ValueError, match=r"NeFT selects rows of module 'model.layers.1.mlp.down_proj', which "
                                         r"modules_to_save=\['down_proj'\] also names.*Drop it from the selection"):
        NeFTConfig(neurons=ROWS, modules_to_save=["down_proj"])
    NeFTConfig(neurons=ROWS, modules_to_save=["lm_head"])  # another module: fine


def test_multihead_attention_out_proj_is_refused_with_the_reason():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(8, 2)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.mha(x, x, x)[0])

    with pytest.raises(ValueError, match=r"NeFT cannot adapt module 'mha.out_proj'.*MultiheadAttention, which reads "
                                         r"`out_proj.weight` directly.*no gradient"):
        get_peft_model(Attention(), NeFTConfig(neurons={"mha.out_proj": [1]}))
    model = get_peft_model(Attention(), NeFTConfig(neurons={"head": [1]}, init_weights=False))
    model(torch.randn(4, 1, 8)).sum().backward()  # the Linear after it trains
    assert model.base_model.model.head.neft_delta["default"].grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = _ids()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])


def test_bf16_autocast_trains_float32_deltas_with_the_gradients_of_a_float32_run():
    """Non-zero deltas, so the delta's part of every gradient counts; autocast takes the unfused path.

    Stated tolerance: relative error below 3% and cosine above 0.999 per delta (measured 0.6-0.7%).
    """
    grads = []
    for autocast in (False, True):
        model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=ROWS))
        generator = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=_ids(), labels=_ids()).loss
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[1].keys() == grads[0].keys() and len(grads[0]) == len(ROWS)
    for name, grad in grads[1].items():
        reference = grads[0][name]
        assert grad.dtype == torch.float32 and reference.norm() > 0
        relative = float((grad - reference).norm() / reference.norm())
        cosine = float(torch.nn.functional.cosine_similarity(grad.flatten(), reference.flatten(), dim=0))
        assert relative < 0.03 and cosine > 0.999, (name, relative, cosine)


class _Nested(torch.nn.Module):
    """``proj`` and ``sub.proj``: one module name is the dotted suffix of another."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 6)
        self.sub = torch.nn.Module()
        self.sub.proj = torch.nn.Linear(4, 6)

    def forward(self, x):
        return self.proj(x) + self.sub.proj(x)


def test_a_module_name_that_ends_another_adapts_only_the_named_module():
    model = get_peft_model(_Nested(), NeFTConfig(neurons={"proj": [1, 4]}))
    adapted = {name for name, m in model.named_modules() if isinstance(m, NeFTLinear)}
    assert adapted == {"base_model.model.proj"}
    both = get_peft_model(_Nested(), NeFTConfig(neurons={"proj": [1], "sub.proj": [0, 2]}))
    counts = {name: m.neft_delta["default"].shape[0] for name, m in both.named_modules() if isinstance(m, NeFTLinear)}
    assert counts == {"base_model.model.proj": 1, "base_model.model.sub.proj": 2}
