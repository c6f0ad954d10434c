"""Adapters save small, load bit-exact (also in a fresh process), and never half-written."""

import json
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import peft_neft
from peft_neft import NeFTConfig

from conftest import make_tiny_llama

ROWS = {"model.layers.0.mlp.up_proj": [1, 9, 33], "model.layers.1.mlp.down_proj": [4, 7], "model.layers.1.self_attn.k_proj": [0]}


@pytest.fixture
def trained(tmp_path):
    """A NeFT model with non-zero deltas, its base saved to disk so AutoPeftModel can resolve it."""
    base = make_tiny_llama()
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), NeFTConfig(neurons=ROWS, init_weights=False, init_seed=7))
    return model, base_dir


def _ids():
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))


def _deltas(model):
    return {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if "neft_delta" in n}


def test_adapter_file_holds_only_deltas_and_rows(trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "adapter")
    tensors = safetensors.torch.load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    expected = {}
    for name, rows in ROWS.items():
        in_features = 64 if "down_proj" in name else 32
        expected[f"base_model.model.{name}.neft_delta"] = ((len(rows), in_features), torch.float32)
        expected[f"base_model.model.{name}.neft_rows"] = ((len(rows),), torch.int64)
    assert {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} == expected
    for name, rows in ROWS.items():
        assert tensors[f"base_model.model.{name}.neft_rows"].tolist() == rows


def test_adapter_config_does_not_grow_with_the_selection(tmp_path):
    small = NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [0]})
    large = NeFTConfig(neurons={"model.layers.0.mlp.up_proj": list(range(64))})
    small.save_pretrained(tmp_path / "small")
    large.save_pretrained(tmp_path / "large")
    small_json = (tmp_path / "small" / "adapter_config.json").read_text()
    large_json = (tmp_path / "large" / "adapter_config.json").read_text()
    assert len(large_json) - len(small_json) <= 2  # only the count's digits differ
    assert json.loads(large_json)["neuron_counts"] == {"model.layers.0.mlp.up_proj": 64}


def test_round_trip_is_bit_exact(trained, tmp_path):
    model, _ = trained
    ids = _ids()
    expected_logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "adapter")
    saved, restored = _deltas(model), _deltas(loaded)
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    layer = loaded.base_model.model.model.layers[0].mlp.up_proj
    assert layer.neft_rows["default"].tolist() == ROWS["model.layers.0.mlp.up_proj"]
    assert torch.equal(loaded(input_ids=ids).logits, expected_logits)


def test_auto_peft_model_resolves_the_base(trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits, rtol=0, atol=0)


def test_load_in_a_fresh_process_that_only_imports_peft_neft(trained, tmp_path):
    model, base_dir = trained
    model.save_pretrained(tmp_path / "adapter")
    torch.save(model(input_ids=_ids()).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch, peft_neft
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        torch.set_num_threads({torch.get_num_threads()})  # the parent's: bit-equal logits need the same reductions
        base = AutoModelForCausalLM.from_pretrained({str(base_dir)!r})
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r})
        ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
        assert torch.equal(model(input_ids=ids).logits, torch.load({str(tmp_path / "expected.pt")!r}))
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, torch.load({str(tmp_path / "expected.pt")!r}))
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_loading_onto_a_base_with_other_shapes_names_the_module(trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "adapter")
    wider = make_tiny_llama(hidden=48)
    with pytest.raises(ValueError, match=r"module 'model\.layers\.0\.mlp\.up_proj' with shape \(64, 32\).*\(64, 48\)"):
        PeftModel.from_pretrained(wider, tmp_path / "adapter")


def test_adapter_without_recorded_shapes_is_still_checked_by_its_delta_shapes(trained, tmp_path):
    """Adapters saved before module shapes were recorded: the delta's shape still catches another hidden size."""
    model, _ = trained
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    del config["module_shapes"]
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"delta of module 'model\.layers\.0\.mlp\.up_proj'.*\(3, 32\).*\(3, 48\).*different layer shapes"):
        PeftModel.from_pretrained(make_tiny_llama(hidden=48), tmp_path / "adapter")


def test_truncated_adapter_file_does_not_load(trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors' is not a readable safetensors file .*truncated or corrupt"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "adapter")


def test_mixed_files_from_two_saves_are_refused(trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "adapter")
    other = NeFTConfig(neurons={**ROWS, "model.layers.0.mlp.up_proj": [1, 2]})
    other.save_pretrained(tmp_path / "adapter")  # config of another save over the old weights
    with pytest.raises(ValueError, match=r"selects 3 rows of module 'model\.layers\.0\.mlp\.up_proj'.*declares 2.*different saves"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "adapter")


def test_config_without_loaded_indices_refuses_to_run():
    config = NeFTConfig(neuron_counts={"model.layers.0.mlp.up_proj": 2})
    model = get_peft_model(make_tiny_llama(), config)
    with pytest.raises(RuntimeError, match="never loaded"):
        model(input_ids=_ids())


def test_interrupted_atomic_save_keeps_the_previous_adapter(trained, tmp_path, monkeypatch):
    model, _ = trained
    target = tmp_path / "adapter"
    peft_neft.save_pretrained_atomically(model, target)
    previous = _deltas(PeftModel.from_pretrained(make_tiny_llama(), target))

    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(1.0)
    real_save_file = safetensors.torch.save_file

    def save_half_then_fail(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr("peft.utils.save_and_load.safe_save_file", save_half_then_fail, raising=False)
    monkeypatch.setattr("peft.peft_model.safe_save_file", save_half_then_fail, raising=False)
    with pytest.raises(OSError, match="disk full"):
        peft_neft.save_pretrained_atomically(model, target)
    monkeypatch.undo()

    kept = _deltas(PeftModel.from_pretrained(make_tiny_llama(), target))
    assert all(torch.equal(previous[k], kept[k]) for k in previous)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".adapter")] == []


def test_atomic_writes_get_ordinary_permissions(trained, tmp_path):
    import os
    import stat

    from peft_neft.selection import NeuronSelection

    model, _ = trained
    peft_neft.save_pretrained_atomically(model, tmp_path / "adapter")
    NeuronSelection(rows={"m": torch.tensor([1])}).save(tmp_path / "sel.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "sel.safetensors").stat().st_mode) == 0o666 & ~mask


def _rewrite_adapter(folder, change):
    """Apply ``change(tensors)`` to the adapter's safetensors file (as a user's tool or a bad copy would)."""
    weights = folder / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    change(tensors)
    safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})


UP0_KEY = "base_model.model.model.layers.0.mlp.up_proj"
DOWN1_KEY = "base_model.model.model.layers.1.mlp.down_proj"


@pytest.fixture
def saved(trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_missing_delta_tensor_is_refused_naming_it(saved):
    _rewrite_adapter(saved, lambda t: t.pop(f"{DOWN1_KEY}.neft_delta"))
    with pytest.raises(ValueError, match=r"no tensor 'base_model\.model\.model\.layers\.1\.mlp\.down_proj\.neft_delta'"):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


def test_missing_rows_tensor_fails_at_load_naming_it(saved):
    _rewrite_adapter(saved, lambda t: t.pop(f"{UP0_KEY}.neft_rows"))
    with pytest.raises(ValueError, match=r"no tensor 'base_model\.model\.model\.layers\.0\.mlp\.up_proj\.neft_rows'"):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


def test_module_missing_from_the_file_is_refused(saved):
    def drop(tensors):
        tensors.pop(f"{UP0_KEY}.neft_rows")
        tensors.pop(f"{UP0_KEY}.neft_delta")

    _rewrite_adapter(saved, drop)
    with pytest.raises(ValueError, match=r"no tensor 'base_model\.model\.model\.layers\.0\.mlp\.up_proj\.neft_(rows|delta)'"):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


def test_float_row_indices_are_refused_not_truncated(saved):
    def to_float(tensors):
        tensors[f"{UP0_KEY}.neft_rows"] = torch.tensor([1.0, 9.7, 33.0])

    _rewrite_adapter(saved, to_float)
    with pytest.raises(ValueError, match=r"up_proj.*integers.*float32"):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


@pytest.mark.parametrize(
    ("rows", "message"),
    [([1, 9, 64], r"must lie in \[0, 64\).*max 64"), ([-1, 9, 33], r"must lie in \[0, 64\).*min -1"),
     ([9, 1, 33], "sorted and unique"), ([1, 9, 9], "sorted and unique")],
)
def test_checkpoint_rows_out_of_range_or_unsorted_are_refused(saved, rows, message):
    def replace(tensors):
        tensors[f"{UP0_KEY}.neft_rows"] = torch.tensor(rows)

    _rewrite_adapter(saved, replace)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


def test_adapter_refused_on_a_base_with_another_intermediate_size(tmp_path):
    """up_proj's delta is (k, hidden) whatever the intermediate size, so only the recorded shape catches this."""
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 9, 33]}))
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj.*\(64, 32\).*\(48, 32\)"):
        PeftModel.from_pretrained(make_tiny_llama(intermediate=48), tmp_path / "adapter")
    PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "adapter")  # the right base still loads


def test_negative_row_count_in_the_config_is_refused(saved):
    config = json.loads((saved / "adapter_config.json").read_text())
    config["neuron_counts"]["model.layers.0.mlp.up_proj"] = -3
    (saved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"neuron_counts.*model\.layers\.0\.mlp\.up_proj.*-3"):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


def test_missing_adapter_weights_file_is_named_not_fetched(saved):
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors"):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


def test_integer_delta_is_refused_not_converted(saved):
    """A header whose dtype says I32 instead of F32 (one flipped byte) would turn the deltas into huge numbers."""
    def to_int(tensors):
        tensors[f"{UP0_KEY}.neft_delta"] = tensors[f"{UP0_KEY}.neft_delta"].view(torch.int32)

    _rewrite_adapter(saved, to_int)
    with pytest.raises(ValueError, match=r"delta of module 'model\.layers\.0\.mlp\.up_proj'.*floating point.*int32"):
        PeftModel.from_pretrained(make_tiny_llama(), saved)


def test_conv1d_gpt2_trains_saves_and_loads(tmp_path):
    """GPT-2's Conv1D stores its weight as (in, out): a row (output neuron) is a column of the weight."""
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    def make_gpt2():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=32)).eval()

    rows = {"transformer.h.0.mlp.c_fc": [2, 17, 40], "transformer.h.1.attn.c_attn": [0, 5], "transformer.h.1.mlp.c_proj": [3]}
    base = make_gpt2()
    original = copy.deepcopy(base)
    model = get_peft_model(base, NeFTConfig(neurons=rows))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"base_model.model.{name}.neft_delta.default" for name in rows}
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    deltas = {name: model.get_submodule(f"base_model.model.{name}").neft_delta["default"] for name in rows}
    assert all(bool((d.abs().sum(1) > 0).all()) for d in deltas.values())
    frozen = {n.replace(".base_layer", ""): p for n, p in model.base_model.model.named_parameters() if "neft_" not in n}
    assert all(torch.equal(p, original.state_dict()[n]) for n, p in frozen.items())

    # gradient = that of the selected columns of the dense Conv1D weight with W[:, R] += D^T
    dense = copy.deepcopy(original)
    with torch.no_grad():
        for name, delta in deltas.items():
            dense.get_submodule(name).weight[:, rows[name]] += delta.T
    model(input_ids=ids, labels=ids).loss.backward()
    dense(input_ids=ids, labels=ids).loss.backward()
    for name, delta in deltas.items():
        torch.testing.assert_close(delta.grad, dense.get_submodule(name).weight.grad[:, rows[name]].T, rtol=1e-4, atol=1e-6)

    expected = model(input_ids=ids).logits.detach()
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(make_gpt2(), tmp_path / "adapter")
    assert torch.equal(loaded(input_ids=ids).logits, expected)
    torch.testing.assert_close(loaded.merge_and_unload()(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    wider = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_fc' with shape \(64, 16\).*\(128, 32\)"):
        PeftModel.from_pretrained(wider, tmp_path / "adapter")
