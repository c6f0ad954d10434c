"""Property test: random shapes, selections and dtypes survive save -> load -> merge -> unmerge.

Seeded and small, so it runs in seconds. Each case checks:
- save (atomic) and load give back the rows and deltas bit for bit, and the loaded model's outputs bit for bit;
- a merge writes exactly ``W[R] + D`` rounded to the weight's dtype, and nothing else;
- merged outputs equal unmerged ones within the dtype's rounding (docs/layer.md states these tolerances);
- unmerge restores every base weight bit for bit, and with it the unmerged outputs;
- ``merge_and_unload`` gives the same model as the merge.
"""

import random

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from peft_neft import NeFTConfig, save_pretrained_atomically

CASES = 12
# Largest |merged - unmerged| logit difference allowed, relative to the largest |logit|: about twice
# the dtype's epsilon (docs/layer.md reports the measured values, all below one epsilon).
MERGE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _case(seed: int):
    rng = random.Random(seed)
    dtype = DTYPES[seed % len(DTYPES)]
    kind = rng.choice(["llama", "gpt2"])
    hidden = rng.choice([16, 32, 48])
    layers = rng.choice([1, 2])
    vocab = rng.choice([64, 96])
    intermediate = rng.choice([32, 64, 80])

    def build():
        torch.manual_seed(seed)
        if kind == "llama":
            config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                 num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=32, tie_word_embeddings=False)
            return LlamaForCausalLM(config).eval().to(dtype)
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, vocab_size=vocab, n_positions=32,
                            n_inner=intermediate)
        return GPT2LMHeadModel(config).eval().to(dtype)

    probe = build()
    suffixes = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc")
    candidates = [name for name, module in probe.named_modules() if name.split(".")[-1] in suffixes]
    chosen = rng.sample(candidates, rng.randint(1, min(4, len(candidates))))
    selection = {}
    for name in sorted(chosen):
        module = probe.get_submodule(name)
        out_features = module.weight.shape[1] if kind == "gpt2" else module.weight.shape[0]
        selection[name] = sorted(rng.sample(range(out_features), rng.randint(1, min(6, out_features))))
    delta_dtype = rng.choice(["float32", str(dtype).removeprefix("torch.")])
    ids = torch.randint(0, vocab, (2, rng.randint(3, 12)), generator=torch.Generator().manual_seed(seed))
    return build, selection, delta_dtype, dtype, ids


def _base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "neft_" not in n}


@pytest.mark.parametrize("seed", range(CASES))
def test_save_load_merge_unmerge_round_trip(seed, tmp_path):
    build, selection, delta_dtype, dtype, ids = _case(seed)
    model = get_peft_model(build(), NeFTConfig(neurons=selection, delta_dtype=delta_dtype))
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        unmerged = model(input_ids=ids).logits

    save_pretrained_atomically(model, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(build(), tmp_path / "adapter")
    saved_state = {n: t for n, t in model.state_dict().items() if "neft_" in n}
    loaded_state = {n: t for n, t in loaded.state_dict().items() if "neft_" in n}
    assert saved_state.keys() == loaded_state.keys() and saved_state
    for name, tensor in saved_state.items():
        assert tensor.dtype == loaded_state[name].dtype and torch.equal(tensor, loaded_state[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, unmerged)

    original = _base_weights(loaded)
    loaded.merge_adapter()
    for name, rows in selection.items():
        layer = loaded.base_model.model.get_submodule(name)
        weight = layer.get_base_layer().weight.detach()
        weight_rows = weight.T if layer.is_conv1d else weight
        before = original[f"base_model.model.{name}.base_layer.weight"]
        before_rows = before.T if layer.is_conv1d else before
        expected = before_rows.clone()
        expected[rows] = (before_rows[rows].float() + layer.neft_delta["default"].detach().float()).to(dtype)
        assert torch.equal(weight_rows, expected), name
    with torch.no_grad():
        merged = loaded(input_ids=ids).logits
    difference = float((merged.float() - unmerged.float()).abs().max() / unmerged.float().abs().max())
    assert difference <= MERGE_TOLERANCE[dtype], (dtype, difference)

    loaded.unmerge_adapter()
    restored = _base_weights(loaded)
    assert all(torch.equal(original[n], restored[n]) for n in original)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, unmerged)

    plain = loaded.merge_and_unload()
    assert not any("neft" in n for n, _ in plain.named_modules())
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, merged)
