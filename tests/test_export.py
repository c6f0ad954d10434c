"""NeFT -> LoRA export is exact under plain peft (checked in a process that never imports peft_neft),
and row-sparse LoRA adapters import back into NeFT exactly."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import peft_neft
from peft_neft import NeFTConfig, export_lora, import_lora
from peft_neft.cli import main

from conftest import make_tiny_llama

LLAMA_ROWS = {
    "model.layers.0.mlp.up_proj": [1, 9, 33, 63],
    "model.layers.0.mlp.down_proj": [0, 5, 31],
    "model.layers.1.mlp.gate_proj": [7],  # a single selected row
    "model.layers.1.self_attn.q_proj": [2, 3, 30],
}
GPT2_ROWS = {
    "transformer.h.0.attn.c_attn": [0, 40, 95],  # Conv1D: weight stored (in, out)
    "transformer.h.0.mlp.c_proj": [4],
    "transformer.h.1.mlp.c_fc": [1, 2, 127],
}


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=False,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def randomize(model, seed=7):
    """Random trainable weights for a LoRA model (NeFT models get theirs from ``init_weights``)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def ids():
    return torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(3))


def neft_adapter(tmp_path, make_base, rows, name="m"):
    """A base saved to disk and a trained-looking NeFT adapter on it; returns (base_dir, adapter_dir, model)."""
    base_dir, adapter_dir = tmp_path / f"{name}_base", tmp_path / f"{name}_neft"
    make_base().save_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), NeFTConfig(neurons=rows, init_weights=False, init_seed=7))
    model.eval().save_pretrained(adapter_dir)
    return base_dir, adapter_dir, model


SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    results = {}
    for job in json.loads(sys.argv[1]):
        ids = torch.load(job["ids"])
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(job["base"]), job["lora"]).eval()
        with torch.no_grad():
            adapted = model(input_ids=ids).logits
            merged = model.merge_and_unload()(input_ids=ids).logits
        torch.save({"adapted": adapted, "merged": merged}, job["out"])
    assert "peft_neft" not in sys.modules, "plain peft imported peft_neft"
    print("ok")
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Llama and GPT-2 NeFT adapters exported to LoRA; the LoRA logits computed in a fresh process."""
    tmp = tmp_path_factory.mktemp("export")
    cases, jobs = {}, []
    for name, make_base, rows in (("llama", make_tiny_llama, LLAMA_ROWS), ("gpt2", tiny_gpt2, GPT2_ROWS)):
        base_dir, adapter_dir, model = neft_adapter(tmp, make_base, rows, name)
        lora_dir = export_lora(adapter_dir, tmp / f"{name}_lora")
        with torch.no_grad():
            expected = model(input_ids=ids()).logits
            expected_merged = model.merge_and_unload()(input_ids=ids()).logits
        torch.save(ids(), tmp / "ids.pt")
        jobs.append({"base": str(base_dir), "lora": str(lora_dir), "ids": str(tmp / "ids.pt"), "out": str(tmp / f"{name}.pt")})
        cases[name] = {"lora": lora_dir, "neft": adapter_dir, "base": base_dir, "expected": expected,
                       "expected_merged": expected_merged, "out": tmp / f"{name}.pt"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                          env=dict(env, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
    return cases


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_plain_peft_reproduces_neft_logits(exported, name):
    case = exported[name]
    got = torch.load(case["out"])
    base_logits = AutoModelForCausalLM.from_pretrained(case["base"])(input_ids=ids()).logits
    assert (case["expected"] - base_logits).abs().max() > 1e-2  # the adapter does change the output
    assert (got["adapted"] - case["expected"]).abs().max() <= 1e-5
    assert (got["merged"] - case["expected_merged"]).abs().max() <= 1e-5


def test_exported_files_are_a_standard_lora(exported):
    lora = exported["llama"]["lora"]
    config = json.loads((lora / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_rslora"] is False
    assert sorted(config["target_modules"]) == sorted(LLAMA_ROWS)
    assert config["base_model_name_or_path"] == str(exported["llama"]["base"])
    ranks = {name: len(rows) for name, rows in LLAMA_ROWS.items()}
    assert config["rank_pattern"] == ranks
    assert config["alpha_pattern"] == config["rank_pattern"]
    assert config["r"] == config["lora_alpha"] == 4
    tensors = safetensors.torch.load_file(lora / "adapter_model.safetensors")
    neft = safetensors.torch.load_file(exported["llama"]["neft"] / "adapter_model.safetensors")
    for name, rows in LLAMA_ROWS.items():
        a, b = tensors[f"base_model.model.{name}.lora_A.weight"], tensors[f"base_model.model.{name}.lora_B.weight"]
        assert torch.equal(a, neft[f"base_model.model.{name}.neft_delta"])
        assert b.sum(0).tolist() == [1.0] * len(rows) and torch.nonzero(b)[:, 0].tolist() == rows
    card = (lora / "README.md").read_text()
    assert "exported by `peft-neft export-lora`" in card.lower() and "selected rows: 11" in card
    gpt2 = json.loads((exported["gpt2"]["lora"] / "adapter_config.json").read_text())
    assert gpt2["fan_in_fan_out"] is True


def test_round_trip_neft_lora_neft_is_bit_exact(exported, tmp_path):
    case = exported["gpt2"]
    back = import_lora(case["lora"], tmp_path / "back")
    original = safetensors.torch.load_file(case["neft"] / "adapter_model.safetensors")
    restored = safetensors.torch.load_file(back / "adapter_model.safetensors")
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) and original[k].dtype == restored[k].dtype for k in original)
    config = json.loads((back / "adapter_config.json").read_text())
    assert config["peft_type"] == "NEFT" and config["neuron_counts"] == {n: len(r) for n, r in GPT2_ROWS.items()}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(case["base"]), back).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids()).logits, case["expected"])


def test_bfloat16_deltas_round_trip_bit_exact(tmp_path):
    model = get_peft_model(make_tiny_llama(), NeFTConfig(neurons=LLAMA_ROWS, delta_dtype="bfloat16", init_weights=False, init_seed=7))
    model.save_pretrained(tmp_path / "neft")
    export_lora(tmp_path / "neft", tmp_path / "lora", base=make_tiny_llama())
    lora = safetensors.torch.load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert {t.dtype for t in lora.values()} == {torch.bfloat16}
    import_lora(tmp_path / "lora", tmp_path / "back")
    original = safetensors.torch.load_file(tmp_path / "neft" / "adapter_model.safetensors")
    restored = safetensors.torch.load_file(tmp_path / "back" / "adapter_model.safetensors")
    assert all(torch.equal(original[k], restored[k]) and original[k].dtype == restored[k].dtype for k in original)
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["delta_dtype"] == "bfloat16"


@pytest.mark.parametrize("use_rslora", [False, True])
def test_row_sparse_lora_imports_exactly(tmp_path, use_rslora):
    """B with values != 1, two columns on one row, a zero column, and alpha/r != 1."""
    target = "model.layers.0.mlp.up_proj"
    lora = get_peft_model(make_tiny_llama(), LoraConfig(r=4, lora_alpha=6, target_modules=[target],
                                                        use_rslora=use_rslora)).eval()
    layer = lora.base_model.model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)))
        b = torch.zeros(64, 4)
        b[3, 0], b[3, 1], b[50, 3] = 2.0, -0.5, 1.5  # column 2 stays zero
        layer.lora_B["default"].weight.copy_(b)
        expected = lora(input_ids=ids()).logits
    lora.save_pretrained(tmp_path / "lora")
    import_lora(tmp_path / "lora", tmp_path / "neft")
    neft = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "neft").eval()
    assert neft.base_model.model.model.layers[0].mlp.up_proj.neft_rows["default"].tolist() == [3, 50]
    with torch.no_grad():
        assert (neft(input_ids=ids()).logits - expected).abs().max() <= 1e-5


def test_dense_lora_is_refused_as_not_row_sparse(tmp_path):
    lora = get_peft_model(make_tiny_llama(), LoraConfig(r=2, target_modules=["up_proj"]))
    randomize(lora)
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="is not row-sparse: column 0 of lora_B"):
        import_lora(tmp_path / "lora", tmp_path / "neft")
    assert not (tmp_path / "neft").exists()


def test_several_adapters_one_or_all(tmp_path):
    base = make_tiny_llama()
    model = get_peft_model(base, NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 2]}, init_weights=False, init_seed=1))
    model.add_adapter("second", NeFTConfig(neurons={"model.layers.1.mlp.down_proj": [4]}, init_weights=False, init_seed=2))
    model.save_pretrained(tmp_path / "neft")
    everything = export_lora(tmp_path / "neft", tmp_path / "all", adapter_name="all", base=make_tiny_llama())
    assert (everything / "adapter_config.json").is_file() and (everything / "second" / "adapter_config.json").is_file()
    one = export_lora(tmp_path / "neft", tmp_path / "one", adapter_name="second", base=make_tiny_llama())
    assert json.loads((one / "adapter_config.json").read_text())["target_modules"] == ["model.layers.1.mlp.down_proj"]
    assert not (one / "second").exists()
    (tmp_path / "only_sub").mkdir()
    os.replace(tmp_path / "neft" / "second", tmp_path / "only_sub" / "second")
    with pytest.raises(ValueError, match="holds adapters only in subfolders \\(second\\)"):
        export_lora(tmp_path / "only_sub", tmp_path / "x", base=make_tiny_llama())


def _dense(tensors, name, out_features, neft=False):
    """One module's update as a dense (out, in) matrix, from NeFT (rows, delta) or LoRA (A, B) tensors."""
    key = f"base_model.model.{name}"
    if neft:
        delta = tensors[f"{key}.neft_delta"]
        dense = torch.zeros(out_features, delta.shape[1], dtype=torch.float64)
        dense[tensors[f"{key}.neft_rows"]] = delta.double()
        return dense
    return tensors[f"{key}.lora_B.weight"].double() @ tensors[f"{key}.lora_A.weight"].double()


OUT_FEATURES = {"model.layers.0.mlp.up_proj": 64, "model.layers.0.mlp.down_proj": 32,
                "model.layers.1.mlp.gate_proj": 64, "model.layers.1.self_attn.q_proj": 32}


def test_max_rank_gives_the_best_rank_r_approximation_and_reports_each_modules_error(exported, tmp_path, caplog):
    case = exported["llama"]
    with caplog.at_level("WARNING", logger="peft_neft.adapters.export"):
        out = export_lora(case["neft"], tmp_path / "out", max_rank=2)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {name: min(len(rows), 2) for name, rows in LLAMA_ROWS.items()}
    lora = safetensors.torch.load_file(out / "adapter_model.safetensors")
    neft = safetensors.torch.load_file(case["neft"] / "adapter_model.safetensors")
    card = (out / "README.md").read_text()
    for name, rows in LLAMA_ROWS.items():
        exact, approx = _dense(neft, name, OUT_FEATURES[name], neft=True), _dense(lora, name, OUT_FEATURES[name])
        if len(rows) <= 2:
            assert torch.equal(exact, approx)  # within the limit: still the exact one-hot form
            assert name not in caplog.text
            continue
        singular = torch.linalg.svdvals(exact)
        optimum = (singular[2:].square().sum() / singular.square().sum()).sqrt().item()  # Eckart-Young
        error = ((exact - approx).norm() / exact.norm()).item()
        assert 0 < optimum and error == pytest.approx(optimum, rel=1e-4)
        assert torch.linalg.matrix_rank(approx) == 2
        assert f"module {name} selects {len(rows)} rows; exported as its best rank-2 approximation, relative " \
               f"error {optimum:.3g}" in caplog.text
        assert f"| {name} | {len(rows)} | 2 | {optimum:.3g} |" in card
    assert json.loads((export_lora(case["neft"], tmp_path / "exact") / "adapter_config.json").read_text())[
        "rank_pattern"] == {name: len(rows) for name, rows in LLAMA_ROWS.items()}  # the default stays exact
    with pytest.raises(ValueError, match="max_rank must be a positive int"):
        export_lora(case["neft"], tmp_path / "bad", max_rank=0)


@pytest.mark.parametrize(("name", "rows"), [("llama", LLAMA_ROWS), ("gpt2", GPT2_ROWS)])
def test_peft_convert_to_lora_and_save_as_lora_agree_with_export_lora(exported, tmp_path, name, rows):
    from peft import convert_to_lora, save_as_lora

    case = exported[name]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(case["base"]), case["neft"]).eval()
    assert model.supports_lora_conversion()
    top = max(len(r) for r in rows.values())
    for rank, out in ((top, export_lora(case["neft"], tmp_path / "exact")),
                      (2, export_lora(case["neft"], tmp_path / "rank2", max_rank=2))):
        ours = safetensors.torch.load_file(out / "adapter_model.safetensors")
        _, theirs = convert_to_lora(model, rank=rank)
        for module in rows:
            torch.testing.assert_close(_dense(theirs, module, 0), _dense(ours, module, 0), rtol=0, atol=1e-5)
    save_as_lora(tmp_path / "saved", model, rank=top)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(case["base"]), tmp_path / "saved").eval()
    with torch.no_grad():
        assert (plain(input_ids=ids()).logits - case["expected"]).abs().max() <= 1e-4


def test_exported_lora_has_a_task_type_and_loads_through_auto_peft_model(exported):
    from peft import AutoPeftModelForCausalLM

    case = exported["llama"]
    assert json.loads((case["lora"] / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    model = AutoPeftModelForCausalLM.from_pretrained(case["lora"]).eval()
    assert model.active_peft_config.peft_type == "LORA"
    with torch.no_grad():
        assert (model(input_ids=ids()).logits - case["expected"]).abs().max() <= 1e-5
    card = (case["lora"] / "README.md").read_text()
    assert 'model = PeftModel.from_pretrained(base, "ADAPTER_DIR")' in card and "import peft_neft" not in card
    assert str(case["base"]) not in card and "[More Information Needed]" not in card


def test_cli_export_and_import(exported, tmp_path, capsys):
    case = exported["llama"]
    assert main(["export-lora", str(case["neft"]), str(tmp_path / "lora"), "--base", str(case["base"])]) == 0
    assert main(["import-lora", str(tmp_path / "lora"), str(tmp_path / "neft")]) == 0
    assert "Wrote NeFT adapter" in capsys.readouterr().out
    assert main(["export-lora", str(case["neft"]), str(tmp_path / "lora")]) == 2  # a usage error
    assert "already holds files this command did not write (such as README.md); pass --overwrite" in \
        capsys.readouterr().err
    capsys.readouterr()
    assert main(["export-lora", str(case["neft"]), str(tmp_path / "lora"), "--overwrite", "--max-rank", "8"]) == 0
    assert "approximation" not in capsys.readouterr().err  # every module within the limit: exact
    assert main(["export-lora", str(case["neft"]), str(tmp_path / "lora"), "--overwrite", "--max-rank", "3"]) == 0
    logged = capsys.readouterr().err  # the command's log, on stderr
    assert "module model.layers.0.mlp.up_proj selects 4 rows; exported as its best rank-3 approximation, " \
           "relative error" in logged and logged.count("approximation") == 1


# ----------------------------------------------------------------------------- bad input


def test_not_a_neft_adapter(tmp_path, exported):
    with pytest.raises(ValueError, match="is not a NeFT adapter: its adapter_config.json has peft_type 'LORA'"):
        export_lora(exported["llama"]["lora"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a NEFT adapter folder"):
        export_lora(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_lora(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="is not a LoRA adapter"):
        import_lora(exported["llama"]["neft"], tmp_path / "out")


def test_adapter_with_no_selected_rows(tmp_path, exported):
    folder = tmp_path / "norows"
    folder.mkdir()
    config = json.loads((exported["llama"]["neft"] / "adapter_config.json").read_text())
    config["neuron_counts"] = {"model.layers.0.mlp.up_proj": 0}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    safetensors.torch.save_file({"base_model.model.model.layers.0.mlp.up_proj.neft_delta": torch.zeros(0, 32),
                                 "base_model.model.model.layers.0.mlp.up_proj.neft_rows": torch.zeros(0, dtype=torch.int64)},
                                folder / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="selects no rows, so there is nothing to export"):
        export_lora(folder, tmp_path / "out")


def test_base_with_other_shapes(tmp_path, exported):
    with pytest.raises(ValueError, match="is 128 -> 48.*trained on another base model. Pass the right one"):
        export_lora(exported["llama"]["neft"], tmp_path / "out", base=make_tiny_llama(hidden=48, intermediate=128))
    with pytest.raises(ValueError, match="has no such module at 'model.layers.0.mlp.down_proj'"):
        export_lora(exported["llama"]["neft"], tmp_path / "out", base=exported["gpt2"]["base"])
    assert not (tmp_path / "out").exists()


def test_output_holding_another_adapter_is_kept(tmp_path, exported):
    out = export_lora(exported["gpt2"]["neft"], tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="already holds files this command did not write .*; pass --overwrite"):
        export_lora(exported["llama"]["neft"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    export_lora(exported["llama"]["neft"], out, overwrite=True)
    assert sorted(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == sorted(LLAMA_ROWS)
    with pytest.raises(ValueError, match="is the source adapter"):
        export_lora(exported["llama"]["neft"], exported["llama"]["neft"], overwrite=True)


class Nested(torch.nn.Module):
    """A module named ``proj`` and another whose name ends in ``.proj``: peft's list rule would catch both."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(8, 8)
        self.sub = torch.nn.Module()
        self.sub.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.sub.proj(torch.relu(self.proj(x)))


def test_names_that_are_suffixes_of_other_names(tmp_path):
    """``proj`` is also the ``.``-suffix of ``sub.proj``: the export must adapt and rank each exactly."""
    both = {"proj": [2], "sub.proj": [0, 3, 7]}
    neft = get_peft_model(Nested(), NeFTConfig(neurons=both, init_weights=False, init_seed=7)).eval()
    neft.save_pretrained(tmp_path / "both")
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    # The same adapter with "proj" only, written by hand (the list rule would catch "sub.proj" too).
    (tmp_path / "outer").mkdir()
    config = json.loads((tmp_path / "both" / "adapter_config.json").read_text())
    config["neuron_counts"], config["target_modules"] = {"proj": 1}, ["proj"]
    (tmp_path / "outer" / "adapter_config.json").write_text(json.dumps(config))
    tensors = safetensors.torch.load_file(tmp_path / "both" / "adapter_model.safetensors")
    outer = {k: v for k, v in tensors.items() if ".sub." not in k}
    safetensors.torch.save_file(outer, tmp_path / "outer" / "adapter_model.safetensors")
    by_hand = Nested()
    with torch.no_grad():
        by_hand.proj.weight[2] += outer["base_model.model.proj.neft_delta"][0]
        expected = {"both": neft(x), "outer": by_hand(x)}
    for name, rows in (("both", both), ("outer", {"proj": [2]})):
        export_lora(tmp_path / name, tmp_path / f"{name}_lora", base=Nested())
        lora = PeftModel.from_pretrained(Nested(), tmp_path / f"{name}_lora").eval()
        adapted = {n for n, m in lora.named_modules() if hasattr(m, "lora_A")}
        assert adapted == {f"base_model.model.{n}" for n in rows}
        with torch.no_grad():
            assert (lora(x) - expected[name]).abs().max() <= 1e-6


# ----------------------------------------------------------------------------- what export and import refuse


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("where", ["the base", "around the base and adapter", "inside the base", "inside the adapter"])
def test_export_refuses_an_output_folder_that_is_contains_or_lies_inside_an_input(tmp_path, capsys, where):
    root = tmp_path / "work"
    root.mkdir()
    base_dir, adapter_dir, _ = neft_adapter(root, make_tiny_llama, LLAMA_ROWS)
    out = {"the base": base_dir, "around the base and adapter": root, "inside the base": base_dir / "lora",
           "inside the adapter": adapter_dir / "lora"}[where]
    before = _snapshot(root)
    for base in (["--base", str(base_dir)], []):  # given, or read from the adapter's config
        assert main(["export-lora", str(adapter_dir), str(out), *base, "--overwrite"]) == 2  # refused, not run
        err = capsys.readouterr().err
        assert f"The output folder {out} " in err and any(f"{how} the" in err for how in ("is", "holds", "lies inside"))
        assert ".tmp" not in err
    assert _snapshot(root) == before  # nothing deleted, nothing written
    AutoModelForCausalLM.from_pretrained(base_dir)  # the base still loads


@pytest.mark.parametrize("inside", [False, True])
def test_import_refuses_an_output_folder_that_is_around_or_inside_its_input(exported, tmp_path, inside):
    lora = tmp_path / "box" / "lora"
    export_lora(exported["llama"]["neft"], lora)
    before = _snapshot(tmp_path / "box")
    out = lora / "neft" if inside else tmp_path / "box"
    with pytest.raises(ValueError, match="lies inside the source adapter" if inside else "holds the source adapter"):
        import_lora(lora, out, overwrite=True)
    assert _snapshot(tmp_path / "box") == before


def test_export_refuses_integer_deltas_as_loading_does(exported, tmp_path):
    folder = tmp_path / "int"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((exported["llama"]["neft"] / "adapter_config.json").read_bytes())
    tensors = safetensors.torch.load_file(exported["llama"]["neft"] / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.mlp.up_proj.neft_delta"
    tensors[key] = tensors[key].view(torch.int32)
    safetensors.torch.save_file(tensors, folder / "adapter_model.safetensors")
    message = r"delta of module 'model\.layers\.0\.mlp\.up_proj'.* must be floating point, got int32"
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(make_tiny_llama(), folder)
    with pytest.raises(ValueError, match=message):
        export_lora(folder, tmp_path / "out", base=exported["llama"]["base"])
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_lm_head_adapter_for_a_base_that_ties_it_as_loading_does(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
    untied = AutoModelForCausalLM.from_pretrained(tmp_path / "tied")  # untied in memory, then trained
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    untied.config.tie_word_embeddings = False
    model = get_peft_model(untied, NeFTConfig(neurons={"lm_head": [3, 7]}, init_weights=False, init_seed=1))
    model.save_pretrained(tmp_path / "neft")
    with pytest.raises(ValueError, match="'lm_head'.*tied to 'model.embed_tokens.weight'"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "tied"), tmp_path / "neft")
    for base in (None, tmp_path / "tied"):  # recorded in the adapter, or given
        with pytest.raises(ValueError, match="'lm_head'.*tied to 'model.embed_tokens.weight'"):
            export_lora(tmp_path / "neft", tmp_path / "lora", base=base)
    assert not (tmp_path / "lora").exists()
    export_lora(tmp_path / "neft", tmp_path / "lora", base=model)  # onto the untied model it was trained on


def test_import_of_several_adapters_takes_one_or_all_or_lists_them(tmp_path, capsys):
    lora = get_peft_model(make_tiny_llama(), LoraConfig(r=2, target_modules=["model.layers.0.mlp.up_proj"]))
    lora.add_adapter("second", LoraConfig(r=2, target_modules=["model.layers.1.mlp.down_proj"]))
    for name, row in (("default", 3), ("second", 5)):
        module = lora.base_model.model.get_submodule(
            "model.layers.0.mlp.up_proj" if name == "default" else "model.layers.1.mlp.down_proj")
        with torch.no_grad():
            module.lora_A[name].weight.normal_()
            module.lora_B[name].weight.zero_()
            module.lora_B[name].weight[row, 0] = 1.0
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match=r"holds adapters several adapters \(default, second\); pass adapter_name"):
        import_lora(tmp_path / "lora", tmp_path / "none")
    assert main(["import-lora", str(tmp_path / "lora"), str(tmp_path / "none")]) == 1
    assert "(default, second)" in capsys.readouterr().err
    one = import_lora(tmp_path / "lora", tmp_path / "one", adapter_name="second")
    assert json.loads((one / "adapter_config.json").read_text())["neuron_counts"] == {"model.layers.1.mlp.down_proj": 1}
    assert main(["import-lora", str(tmp_path / "lora"), str(tmp_path / "all"), "--adapter", "all"]) == 0
    model = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "all")
    model.load_adapter(tmp_path / "all" / "second", adapter_name="second")
    assert model.base_model.model.model.layers[0].mlp.up_proj.neft_rows["default"].tolist() == [3]
    assert model.base_model.model.model.layers[1].mlp.down_proj.neft_rows["second"].tolist() == [5]


def test_logs_name_the_folders_the_user_gave_never_a_temporary_one(exported, tmp_path, caplog):
    with caplog.at_level("INFO", logger="peft_neft.adapters.export"):
        export_lora(exported["llama"]["neft"], tmp_path / "lora", max_rank=2)
        import_lora(exported["gpt2"]["lora"], tmp_path / "neft")
    assert f"to {tmp_path / 'lora'}" in caplog.text and f"to {tmp_path / 'neft'}" in caplog.text
    assert ".tmp" not in caplog.text
