"""Merge/unmerge (bit-exact restore), merge_and_unload, and several adapters on one model."""

import pytest
import torch
from peft import get_peft_model

from peft_neft import NeFTConfig

from conftest import make_tiny_llama

A = {"model.layers.0.mlp.up_proj": [1, 2, 3], "model.layers.1.mlp.down_proj": [0, 5]}
B = {"model.layers.0.mlp.up_proj": [2, 3, 9], "model.layers.0.self_attn.v_proj": [1]}


def _ids():
    return torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "neft_" not in n}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_adds_the_deltas_in_the_weight_dtype_and_unmerge_restores_the_base_bit_for_bit(dtype):
    model = get_peft_model(make_tiny_llama().to(dtype), NeFTConfig(neurons=A, init_weights=False, init_seed=1))
    before = _weights(model)
    model.merge_adapter()
    for name, rows in A.items():
        layer = model.base_model.model.get_submodule(name)
        original = before[f"base_model.model.{name}.base_layer.weight"]
        expected = original.clone()
        # the merged rows: each original row plus its float32 delta, summed in float32 and rounded once
        expected[rows] = (original[rows].float() + layer.neft_delta["default"].detach()).to(dtype)
        assert layer.base_layer.weight.dtype == dtype
        assert torch.equal(layer.base_layer.weight, expected)
        assert not torch.equal(layer.base_layer.weight, original)
    model.unmerge_adapter()
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_merged_outputs_equal_unmerged_outputs():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=2))
    ids = _ids()
    unmerged = model(input_ids=ids).logits
    model.merge_adapter()
    torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    plain = model.merge_and_unload()
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert not any("neft" in n for n, _ in plain.named_modules())
    torch.testing.assert_close(plain(input_ids=ids).logits, unmerged, rtol=1e-5, atol=1e-5)


def test_safe_merge_refuses_non_finite_results():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    original = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.neft_delta["default"][1, 4] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, original)


def test_overlapping_adapters_compose_additively_and_merge_in_any_order():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=3), adapter_name="a")
    model.add_adapter("b", NeFTConfig(neurons=B, init_weights=False, init_seed=4))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    weight = layer.base_layer.weight.detach().clone()
    expected = weight.clone()
    expected[[1, 2, 3]] += layer.neft_delta["a"].detach()
    expected[[2, 3, 9]] += layer.neft_delta["b"].detach()
    x = torch.randn(3, 32)

    model.base_model.set_adapter(["a", "b"])
    torch.testing.assert_close(layer(x), x @ expected.T, rtol=1e-5, atol=1e-5)

    before = _weights(model)
    model.merge_adapter(adapter_names=["a", "b"])
    torch.testing.assert_close(layer.base_layer.weight, expected, rtol=1e-6, atol=1e-6)
    model.unmerge_adapter()
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_set_disable_and_delete_adapter():
    base_logits = make_tiny_llama()(input_ids=_ids()).logits
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=5), adapter_name="a")
    model.add_adapter("b", NeFTConfig(neurons=B, init_weights=False, init_seed=6))
    ids = _ids()

    model.set_adapter("a")
    out_a = model(input_ids=ids).logits
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("neft_delta.a") for n in trainable)
    model.set_adapter("b")
    out_b = model(input_ids=ids).logits
    assert not torch.allclose(out_a, out_b)

    with model.disable_adapter():
        torch.testing.assert_close(model(input_ids=ids).logits, base_logits)
    torch.testing.assert_close(model(input_ids=ids).logits, out_b)

    model.delete_adapter("b")
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert "b" not in layer.neft_delta and "b" not in layer.neft_rows
    assert model.base_model.active_adapters == ["a"] and layer.active_adapters == ["a"]
    torch.testing.assert_close(model(input_ids=ids).logits, out_a)


def test_merge_refuses_a_quantized_weight_with_a_clear_message():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    layer.base_layer.weight = torch.nn.Parameter(layer.base_layer.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(NotImplementedError, match="quantized base"):
        layer.merge()


def test_get_delta_weight_is_the_dense_difference_a_merge_makes():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=7))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    original = layer.base_layer.weight.detach().clone()
    delta = layer.get_delta_weight("default")
    model.merge_adapter()
    torch.testing.assert_close(layer.base_layer.weight - original, delta, rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(delta.abs().sum(1)) == 3


# ---- a failed safe merge changes nothing ----


def _modules(model):
    return {n: type(m).__name__ for n, m in model.named_modules()}


def test_failed_safe_merge_and_unload_leaves_the_model_untouched():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=8))
    late = model.base_model.model.model.layers[1].mlp.down_proj  # merged after layer 0's up_proj
    with torch.no_grad():
        late.neft_delta["default"][0, 3] = float("nan")
    ids = _ids()
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
    before, modules = _weights(model), _modules(model)
    with pytest.raises(ValueError, match="down_proj.*non-finite"):
        model.merge_and_unload(safe_merge=True)
    assert _modules(model) == modules  # no layer was unloaded
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # and none has a delta baked in
    assert not any(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))
    with torch.no_grad():
        late.neft_delta["default"].nan_to_num_(0.0)
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base_logits, rtol=0, atol=0)


def test_failed_safe_merge_adapter_leaves_every_layer_unmerged():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=9))
    with torch.no_grad():
        model.base_model.model.model.layers[1].mlp.down_proj.neft_delta["default"][1, 0] = float("inf")
    before = _weights(model)
    with pytest.raises(ValueError, match="non-finite"):
        model.merge_adapter(safe_merge=True)
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))


def test_safe_merge_checks_overlapping_adapters_together():
    # Each fp16 delta alone merges to a finite weight; the two together overflow the same rows.
    model = get_peft_model(make_tiny_llama().half(), NeFTConfig(neurons=A), adapter_name="a")
    model.add_adapter("b", NeFTConfig(neurons=B))
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.neft_delta["a"].fill_(40000.0)
        layer.neft_delta["b"].fill_(40000.0)
    before = _weights(model)
    with pytest.raises(ValueError, match="non-finite"):
        model.merge_adapter(adapter_names=["a", "b"], safe_merge=True)
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not layer.merged


def test_merge_of_a_layer_whose_rows_were_never_loaded_changes_no_other_layer():
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=A, init_weights=False, init_seed=10))
    unloaded = model.base_model.model.model.layers[1].mlp.down_proj
    unloaded._rows_awaiting_load.add("default")  # as built from counts only: placeholder rows, never loaded
    unloaded.neft_rows["default"].fill_(-1)
    before, modules = _weights(model), _modules(model)
    with pytest.raises(RuntimeError, match="never loaded"):
        model.merge_and_unload()
    assert _modules(model) == modules
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


# ---- tied input/output embeddings ----


def _tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def test_get_peft_model_refuses_rows_of_a_weight_tied_to_the_input_embeddings():
    with pytest.raises(ValueError, match=r"'lm_head'.*tied to 'model\.embed_tokens\.weight'.*[Uu]ntie"):
        get_peft_model(_tied_llama(), NeFTConfig(neurons={"lm_head": [3, 7]}))


def test_loading_an_lm_head_adapter_onto_a_tied_base_is_refused(tmp_path):
    from peft import PeftModel

    untied = _tied_llama()
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    untied.config.tie_word_embeddings = False
    get_peft_model(untied, NeFTConfig(neurons={"lm_head": [3, 7]})).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tied"):
        PeftModel.from_pretrained(_tied_llama(), tmp_path)


def test_a_weight_tied_after_get_peft_model_is_refused_before_any_merge():
    model = _tied_llama()
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    peft_model = get_peft_model(model, NeFTConfig(neurons={"lm_head": [3, 7], **A}, init_weights=False, init_seed=12))
    peft_model.base_model.model.lm_head.base_layer.weight = peft_model.base_model.model.model.embed_tokens.weight
    before = _weights(peft_model)
    for merge in (peft_model.merge_adapter, peft_model.merge_and_unload):
        with pytest.raises(ValueError, match="tied to 'model.embed_tokens.weight'"):
            merge()
    after = _weights(peft_model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_the_untie_fix_in_the_error_message_gives_an_exact_merge():
    model = _tied_llama()
    embeddings = model.model.embed_tokens.weight.detach().clone()
    # The fix the error message names, verbatim:
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    peft_model = get_peft_model(model, NeFTConfig(neurons={"lm_head": [3, 7]}, init_weights=False, init_seed=11))
    ids = torch.tensor([[3, 7, 1, 2, 3, 7]])
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
        plain = peft_model.merge_and_unload()
        torch.testing.assert_close(plain(input_ids=ids).logits, unmerged, rtol=1e-5, atol=1e-5)
    assert torch.equal(plain.model.embed_tokens.weight, embeddings)


# ---- Conv1D (GPT-2): weights stored in x out, so a row (output neuron) is a column ----

GPT2_ROWS = {"transformer.h.0.mlp.c_fc": [1, 7, 30], "transformer.h.1.attn.c_proj": [0, 4], "transformer.h.1.mlp.c_proj": [3]}


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, tie_word_embeddings=False)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_over_a_conv1d_model_adds_each_delta_to_its_column_and_unmerge_restores_it(dtype):
    model = get_peft_model(_tiny_gpt2().to(dtype), NeFTConfig(neurons=GPT2_ROWS, init_weights=False, init_seed=3))
    ids = _ids()
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
    before = _weights(model)
    model.merge_adapter()
    for name, rows in GPT2_ROWS.items():
        layer = model.base_model.model.get_submodule(name)
        original = before[f"base_model.model.{name}.base_layer.weight"]
        expected = original.clone()  # in x out: output neuron r is column r
        expected[:, rows] = (original[:, rows].float() + layer.neft_delta["default"].detach().T).to(dtype)
        assert torch.equal(layer.base_layer.weight, expected), name
    with torch.no_grad():
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
        torch.testing.assert_close(model(input_ids=ids).logits, unmerged, **tolerance)
    model.unmerge_adapter()
    assert all(torch.equal(before[n], p) for n, p in _weights(model).items())
    plain = model.merge_and_unload()
    assert type(plain).__name__ == "GPT2LMHeadModel" and not any("neft" in n for n, _ in plain.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, unmerged, **tolerance)
