"""The precision policy: resolved once, the same on every machine, and every method correct in bf16.

Nothing here depends on what this machine's CPU can do: ``auto`` is tested with the capability probe
patched both ways, and bf16 runs everywhere (emulated on an AVX2 CPU: slow but correct).
"""

import functools
import logging

import pytest
import torch

import peft_neft.training.precision as precision_module
from conftest import make_tiny_llama
from peft_neft.compare import compare, parse_method, prepare_model
from peft_neft.compare.methods import shape_scores
from peft_neft.training import Precision, TrainingSettings, train_model
from peft_neft.training.precision import resolve_device
from test_compare import ALL_METHODS, _config, data, tokenizer  # noqa: F401  (fixtures)
from test_training import _collate, _data


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_capability_probe(monkeypatch, caplog, native):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.INFO, logger="peft_neft"):
        resolved = Precision.resolve("cpu", "auto")
    assert resolved == Precision(torch.device("cpu"), torch.bfloat16 if native else torch.float32, True)
    assert f"precision: {resolved.name} on cpu (auto: {'native' if native else 'no native'} bf16" in caplog.text


@pytest.mark.parametrize("native", [True, False])
def test_bf16_runs_everywhere_and_warns_once_where_it_is_emulated(monkeypatch, caplog, native):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    precision_module._warn_emulated.cache_clear()
    with caplog.at_level(logging.WARNING, logger="peft_neft"):
        first, second = Precision.resolve("cpu", "bfloat16"), Precision.resolve("cpu", torch.bfloat16)
    assert first == second and first.dtype == torch.bfloat16 and first.native is native
    assert caplog.text.count("emulated") == (0 if native else 1)


def test_float32_and_bad_choices():
    assert Precision.resolve("cpu", "float32") == Precision(torch.device("cpu"), torch.float32, True)
    for bad, message in (("float16", "--dtype float16 is not supported: it needs loss scaling"),
                         (torch.float16, "--dtype float16"), ("fp8", "--dtype 'fp8' is not supported"),
                         (torch.int8, "--dtype")):
        with pytest.raises(ValueError, match=message):
            Precision.resolve("cpu", bad)
    for bad in ("tpu", "gpu0", "mps"):
        with pytest.raises(ValueError, match="--device"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("text", ["cuda", "cuda:1"])
def test_cuda_without_cuda_names_the_flag(text):
    with pytest.raises(ValueError, match="--device .*no CUDA"):
        resolve_device(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [
    ["demo", "--out", "{tmp}/d"],
    ["compare", "--train", "{tmp}/t.jsonl", "--eval", "{tmp}/t.jsonl", "--methods", "lora:8", "--out", "{tmp}/c"],
    ["calibrate", "--data", "{tmp}/t.jsonl", "--percent", "1", "--out", "{tmp}/s.safetensors"],
    ["analyze", "--model-a", "default", "--model-b", "default", "--data", "{tmp}/t.jsonl", "--out", "{tmp}/a"],
])
def test_every_command_refuses_cuda_without_cuda(tmp_path, capsys, command):
    from peft_neft.cli import main

    (tmp_path / "t.jsonl").write_text('{"source": "a", "target": "b", "text": "a"}\n')
    assert main([part.format(tmp=tmp_path) for part in command] + ["--device", "cuda"]) == 2
    assert "--device 'cuda': this machine has no CUDA" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("spec", [m for m in ALL_METHODS if m != "base"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_method_trains_in_the_dtypes_the_policy_says(spec, dtype):
    """Trained tensors float32, frozen ones in the compute dtype, before and after training (no crash in bf16)."""
    method = parse_method(spec.replace(":2", ":1"))
    base = make_tiny_llama()
    scores = shape_scores(base, ("up_proj", "down_proj"))
    model = prepare_model(base, method, 0, scores)
    precision = Precision(torch.device("cpu"), dtype, True)
    train, val = _data()
    train_model(model, train, val, _collate, TrainingSettings(max_steps=2, batch_size=8, eval_every=2),
                learning_rate=1e-3, seed=0, precision=precision, progress=False)
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    assert set(frozen.values()) <= {dtype} and (frozen or method.kind == "full")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_compare_method_trains_and_decodes(tokenizer, data, tmp_path, dtype):  # noqa: F811
    loader = functools.partial(make_tiny_llama, vocab=len(tokenizer))
    results = compare(loader, tokenizer, data, ALL_METHODS, [0], tmp_path / dtype, _config(dtype=dtype),
                      progress=False)
    assert set(results["runs"]) == {f"{m}@seed0" for m in ALL_METHODS}
    assert results["identity"]["dtype"] == dtype
    for key, run in results["runs"].items():
        assert run["scores"]["chrf"] >= 0 and run["best_val_loss"] == run["best_val_loss"], key  # not NaN
    calibrated = results["runs"]["neft:match-lora:2@seed0"]["calibration"]
    assert calibrated["dtype"] == "float32"  # calibration computes in float32 whatever the training dtype


def test_the_calibration_and_so_the_selection_do_not_depend_on_the_training_dtype(tokenizer, data, tmp_path):  # noqa: F811
    loader = functools.partial(make_tiny_llama, vocab=len(tokenizer))
    rows = {}
    for dtype in ("float32", "bfloat16"):
        compare(loader, tokenizer, data, ["neft:match-lora:2"], [0], tmp_path / dtype, _config(dtype=dtype),
                progress=False)
        from peft_neft.selection import NeuronSelection

        selection = NeuronSelection.load(tmp_path / dtype / "adapters" / "neft_match-lora_2" / "selection.safetensors")
        rows[dtype] = {k: v.tolist() for k, v in selection.rows.items()}
    assert rows["float32"] == rows["bfloat16"]


def _tiny_model_folder(path, seed=0):
    from conftest import make_tiny_tokenizer

    make_tiny_llama(seed=seed).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def test_calibrate_and_analyze_commands_run_in_both_dtypes(tmp_path, capsys):
    """calibrate: the cosine selection is the same whatever --dtype (float32 calibration), the gradient score runs
    under bf16 autocast; analyze runs the two models in bf16."""
    import json

    from peft_neft.cli import main
    from peft_neft.selection import NeuronSelection

    model = _tiny_model_folder(tmp_path / "tiny")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"source": f"n{s} n{s + 1}", "target": f"n{s + 2}"}) + "\n"
                            for s in range(10, 60, 3)))
    selections = {}
    for method in ("cosine", "gradient"):
        for dtype in ("float32", "bfloat16"):
            out = tmp_path / f"{method}-{dtype}.safetensors"
            assert main(["calibrate", "--model", str(model), "--data", str(data), "--method", method, "--steps", "2",
                         "--lr", "1e-2", "--batch-size", "4", "--num-neurons", "8", "--dtype", dtype,
                         "--out", str(out)]) == 0
            selections[method, dtype] = NeuronSelection.load(out)
    same = selections["cosine", "float32"], selections["cosine", "bfloat16"]
    assert {k: v.tolist() for k, v in same[0].rows.items()} == {k: v.tolist() for k, v in same[1].rows.items()}
    assert selections["gradient", "bfloat16"].num_neurons == 8
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"n{s} n{s + 1} n{s + 2}" for s in range(10, 40)) + "\n")
    other = _tiny_model_folder(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(["analyze", "--model-a", str(model), "--model-b", str(other), "--data", str(texts),
                 "--dtype", "bfloat16", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file() and "Avg(|ΔRank|)" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_feeds_the_lm_head_a_contiguous_input(tokenizer, dtype):  # noqa: F811
    """A strided bf16 input sends torch's CPU linear to a batched matmul that copies the head weight per row
    (seconds per batch); the compare's greedy decoding hands the head a contiguous input, and the same text."""
    from peft_neft.compare.evaluate import contiguous_head_input, generate

    model = make_tiny_llama(vocab=len(tokenizer)).to(dtype).eval()
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    prompts = [tokenizer("Hello there, my friend")["input_ids"], tokenizer("Save")["input_ids"]]
    ids = torch.tensor([[tokenizer.pad_token_id] * (len(prompts[0]) - len(p)) + p for p in prompts])
    plain = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert not all(seen)  # transformers gives the head a strided view of the last position
    seen.clear()
    with contiguous_head_input(model):
        hooked = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert seen and all(seen) and torch.equal(hooked, plain)
    seen.clear()
    generate(model, tokenizer, prompts, max_new_tokens=3, batch_size=2, progress=False)
    assert seen and all(seen)
    seen.clear()
    model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert not all(seen)  # the hook is gone afterwards


def test_bf16_training_batches_are_padded_to_reusable_lengths_and_the_loss_does_not_change(tokenizer):  # noqa: F811
    """bf16 kernels are prepared per shape: its batches round their length up to 16; padding is masked out."""
    from peft_neft.tasks import encode_for_training, make_collator
    from peft_neft.training.loss import causal_lm_target_loss

    assert Precision(torch.device("cpu"), torch.bfloat16, True).pad_to_multiple_of == 16
    assert Precision(torch.device("cpu"), torch.float32, True).pad_to_multiple_of is None
    rows = [encode_for_training(tokenizer, "Translate.", s, t) for s, t in (("Save", "Enregistrer"), ("Hello there", "Bonjour"))]
    exact, rounded = make_collator(tokenizer)(rows), make_collator(tokenizer, 16)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert exact["input_ids"].shape[1] == longest and longest % 16
    assert rounded["input_ids"].shape[1] == -(-longest // 16) * 16
    model = make_tiny_llama(vocab=len(tokenizer)).eval()
    with torch.no_grad():
        assert torch.allclose(causal_lm_target_loss(model, **exact), causal_lm_target_loss(model, **rounded), atol=1e-6)
