"""The comparison harness end to end on a tiny Llama, the real SmolLM2 tokenizer and real Django pairs."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import sacrebleu
import torch
from peft import PeftModel
from transformers import AutoTokenizer

from conftest import make_tiny_llama
from peft_neft.cli import main
from peft_neft.compare import (
    DEFAULT_LR,
    CompareConfig,
    compare,
    paired_tests,
    parse_method,
    parse_methods,
    prepare_model,
    read_outputs,
    select_for,
)
from peft_neft.compare.methods import shape_scores
from peft_neft.tasks import make_collator
from peft_neft.training import Precision, TrainingSettings, train_model
from peft_neft.training.trainer import trainable_parameters
from peft_neft.selection import budget_from_lora
from peft_neft.tasks import django_translation_pairs, encode_for_training

CPU32 = Precision(torch.device("cpu"), torch.float32, True)
ALL_METHODS = ["base", "full", "embed", "in-out", "lora:2", "neft:match-lora:2",
               "neft-random:match-lora:2", "neft-reversed:match-lora:2"]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def data():
    pairs = django_translation_pairs("fr")
    return {"train": pairs["train"].select(range(16)), "validation": pairs["validation"].select(range(6)),
            "test": pairs["test"].select(range(6))}


def _loader(tokenizer):
    return lambda: make_tiny_llama(vocab=len(tokenizer))


def _config(**overrides):
    """Settings of a tiny comparison, in float32 whatever this machine's CPU (bf16 is tested in test_precision.py)."""
    values = dict(max_steps=3, eval_every=2, batch_size=4, calibration_steps=2, max_new_tokens=4, dtype="float32")
    values.update(overrides)
    return CompareConfig(**values)


def test_parse_methods():
    assert parse_method("lora:8").rank == 8
    assert parse_method("neft:0.5%").percent == 0.5 and parse_method("neft:2").percent == 2.0
    neft = parse_method("neft-random:match-lora:16")
    assert (neft.kind, neft.rank, neft.strategy) == ("neft", 16, "random")
    assert parse_method("neft-reversed:1").strategy == "reversed"
    for bad in ("lora", "lora:0", "neft:match-lora:x", "neft:0", "neft:150", "adapter:4", "ia3"):
        with pytest.raises(ValueError, match="Unknown method .* Known methods"):
            parse_method(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_methods("lora:8,LoRA:8")


def _dense_state(model) -> dict[str, torch.Tensor]:
    """The weights a model computes with (adapters merged in), keyed by base-model names."""
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("spec", ALL_METHODS[1:])
def test_each_method_trains_only_what_it_should(tokenizer, data, spec):
    from peft_neft.selection import calibrate

    instruction = "Translate this English text into French."
    rows = [encode_for_training(tokenizer, instruction, s, t) for s, t in zip(data["train"]["source"], data["train"]["target"])]
    method = parse_method(spec)
    base = _loader(tokenizer)()
    before = _dense_state(base)
    scores = calibrate(_loader(tokenizer)(), rows, steps=2, lr=1e-3, batch_size=4, seed=0,
                       collate_fn=make_collator(tokenizer), progress=False) if method.kind == "neft" else None
    model = prepare_model(base, method, seed=0, scores=scores)
    trainable = sum(p.numel() for p in trainable_parameters(model))
    train_model(model, rows, rows[:4], make_collator(tokenizer),
                TrainingSettings(max_steps=3, batch_size=4, eval_every=3, warmup_ratio=0.0, patience=None),
                learning_rate=1e-2, seed=0, precision=CPU32, progress=False)
    selection = {n.removeprefix("base_model.model."): m.neft_rows["default"].clone()
                 for n, m in model.named_modules() if hasattr(m, "neft_rows")}
    after = _dense_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    blocks = [k for k in before if ".layers." in k]
    if spec == "full":
        assert trainable == sum(p.numel() for p in base.parameters())
        assert {k for k in blocks if k.endswith("proj.weight")} <= changed and "lm_head.weight" in changed
    elif spec == "embed":
        assert changed == {"model.embed_tokens.weight"}
        assert trainable == before["model.embed_tokens.weight"].numel()
    elif spec == "in-out":
        expected = {k for k in before if k.endswith(("up_proj.weight", "down_proj.weight"))}
        assert changed == expected and trainable == sum(before[k].numel() for k in expected)
    elif spec == "lora:2":
        assert trainable == budget_from_lora(_loader(tokenizer)(), r=2)
        assert changed and changed <= {k for k in blocks if k.endswith("proj.weight")}
        assert "model.embed_tokens.weight" not in changed and "lm_head.weight" not in changed
    else:  # the budget is met to within one row (a row of down_proj costs 64 parameters here)
        assert abs(trainable - budget_from_lora(_loader(tokenizer)(), r=2)) <= 64
        assert changed and all(k.removesuffix(".weight") in selection for k in changed)
        changed_rows = 0
        for name, rows_kept in selection.items():
            diff = (before[name + ".weight"] != after[name + ".weight"]).any(dim=1).nonzero().flatten()
            assert set(diff.tolist()) <= set(rows_kept.tolist())  # only selected rows move
            changed_rows += diff.numel()
        assert changed_rows > 0
        assert sum(r.numel() * before[n + ".weight"].shape[1] for n, r in selection.items()) == trainable


def test_random_rows_do_not_depend_on_calibration(tokenizer, data):
    """neft-random skips the calibration: shape-only scores pick the rows calibrated scores would."""
    from peft_neft.selection import calibrate

    rows = [encode_for_training(tokenizer, "Translate.", s, t) for s, t in zip(data["train"]["source"], data["train"]["target"])]
    model, method = _loader(tokenizer)(), parse_method("neft-random:match-lora:2")
    calibrated = calibrate(_loader(tokenizer)(), rows, steps=2, lr=1e-3, batch_size=4, seed=0,
                           collate_fn=make_collator(tokenizer), progress=False)
    for seed in (0, 1):
        expected = select_for(model, method, calibrated, seed).rows
        got = select_for(model, method, shape_scores(model, CompareConfig().neft_target_modules), seed).rows
        assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)
    by_seed = [{n: r.tolist() for n, r in select_for(model, method, calibrated, seed).rows.items()} for seed in (0, 1)]
    assert by_seed[0] != by_seed[1]  # the seed, not the scores, decides random rows


def test_compare_end_to_end_scores_and_resume(tokenizer, data, tmp_path, caplog):
    out = tmp_path / "cmp"
    results = compare(_loader(tokenizer), tokenizer, data, ALL_METHODS, [0], out, _config(), model_id="tiny")
    assert set(results["runs"]) == {f"{m}@seed0" for m in ALL_METHODS}
    stored = json.loads((out / "results.json").read_text())
    assert stored["runs"].keys() == results["runs"].keys()
    # Each run's outputs are stored once, under its own key (not also under its training's).
    assert sorted(p.name for p in (out / "outputs").iterdir()) == \
        sorted(f"{key.replace(':', '_')}.jsonl.gz" for key in stored["runs"])
    for key, run in stored["runs"].items():
        outputs = read_outputs(out / "outputs" / f"{key.replace(':', '_')}.jsonl.gz")
        hyps, refs = outputs["hypothesis"], outputs["reference"]
        assert refs == list(data["test"]["target"])
        assert run["scores"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
        assert run["scores"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
        for metric, interval in run["intervals"].items():  # scored against the references, as the run was
            assert interval["score"] == pytest.approx(run["scores"][metric]), (key, metric)
    neft, lora = stored["runs"]["neft:match-lora:2@seed0"], stored["runs"]["lora:2@seed0"]
    assert abs(neft["trainable_params"] - lora["trainable_params"]) <= 64 and lora["trainable_params"] == 2048
    assert neft["calibration"]["steps"] == 2 and lora["calibration"] is None
    assert stored["runs"]["neft-random:match-lora:2@seed0"]["calibration"] is None  # random rows need no scores
    assert stored["runs"]["base@seed0"]["trainable_params"] == 0
    assert 0 < neft["adapter_bytes"] < stored["runs"]["full@seed0"]["adapter_bytes"]
    table = (out / "results.md").read_text()
    assert f"| neft:match-lora:2 | {neft['trainable_params']:,} |" in table and "nrefs:1" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # Paired tests, same seed: NeFT against the LoRA it matches, the ablations also against NeFT and random rows.
    tests = {(r["system"], r["baseline"]): r["tests"] for r in paired_tests(stored)}
    assert set(tests) == {("neft:match-lora:2", "lora:2"), ("neft-random:match-lora:2", "lora:2"),
                          ("neft-random:match-lora:2", "neft:match-lora:2"), ("neft-reversed:match-lora:2", "lora:2"),
                          ("neft-reversed:match-lora:2", "neft:match-lora:2"),
                          ("neft-reversed:match-lora:2", "neft-random:match-lora:2")}
    delta = tests[("neft:match-lora:2", "lora:2")]["chrf"]["delta"]
    assert delta == pytest.approx(neft["scores"]["chrf"] - lora["scores"]["chrf"])
    assert "## Paired tests" in table and "| neft:match-lora:2 | lora:2 | 0 | " in table

    # Resume: finished runs are skipped and kept as they were; a new seed is added.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="peft_neft"):
        again = compare(_loader(tokenizer), tokenizer, data, ["base", "lora:2"], [0, 1], out, _config(), model_id="tiny")
    printed = caplog.text
    assert "base@seed0: already done, skipped" in printed and "lora:2@seed0: already done, skipped" in printed
    assert "lora:2@seed1: bleu=" in printed and "base@seed1: skipped, the untrained model" in printed
    assert again["runs"]["lora:2@seed0"] == stored["runs"]["lora:2@seed0"]
    assert "lora:2@seed1" in again["runs"] and "base@seed1" not in again["runs"]  # base is evaluated once
    assert "| lora:2 | 2,048 | " in (out / "results.md").read_text() and "±" in (out / "results.md").read_text()


def test_other_configuration_and_bad_input_are_refused(tokenizer, data, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), model_id="tiny")
    # Learning rates are stored resolved: naming a default is the same configuration, and changed
    # defaults refuse the folder instead of mixing two rates in it.
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(learning_rates={"lora": DEFAULT_LR["lora"]}),
            model_id="tiny")
    with monkeypatch.context() as patch:
        patch.setitem(DEFAULT_LR, "neft", 10 * DEFAULT_LR["neft"])
        with pytest.raises(ValueError, match="different configuration"):
            compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), model_id="tiny")
    with pytest.raises(ValueError, match=r"different configuration \(config\.max_steps: stored 3, now 5\)\. Use a new --out folder"):
        compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(max_steps=5), model_id="tiny")
    with pytest.raises(ValueError, match="different configuration"):
        smaller = dict(data, train=data["train"].select(range(10)))
        compare(_loader(tokenizer), tokenizer, smaller, ["base"], [0], out, _config(), model_id="tiny")
    with pytest.raises(ValueError, match="missing or empty"):
        compare(_loader(tokenizer), tokenizer, dict(data, test=data["test"].select([])), ["base"], [0], tmp_path / "x")
    with pytest.raises(ValueError, match="Unknown method"):
        compare(_loader(tokenizer), tokenizer, data, ["lora:8", "prefix"], [0], tmp_path / "y")


def test_interrupted_run_keeps_finished_results(tokenizer, data, tmp_path):
    out = tmp_path / "cmp"

    def failing_loader():
        if (out / "results.json").exists():  # the first run is stored; the second dies while loading its model
            raise RuntimeError("machine went away")
        return make_tiny_llama(vocab=len(tokenizer))

    with pytest.raises(RuntimeError, match="went away"):
        compare(failing_loader, tokenizer, data, ["base", "lora:2"], [0], out, _config(), model_id="tiny")
    stored = json.loads((out / "results.json").read_text())
    assert list(stored["runs"]) == ["base@seed0"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written files
    resumed = compare(_loader(tokenizer), tokenizer, data, ["base", "lora:2"], [0], out, _config(), model_id="tiny")
    assert resumed["runs"]["base@seed0"] == stored["runs"]["base@seed0"] and "lora:2@seed0" in resumed["runs"]


def test_cli_reports_bad_input(tmp_path, capsys):
    (tmp_path / "a.en").write_text("one\ntwo\n")
    (tmp_path / "a.fr").write_text("un\n")
    args = ["compare", "--train", str(tmp_path / "a.en"), str(tmp_path / "a.fr"), "--eval", str(tmp_path / "a.en"),
            str(tmp_path / "a.fr"), "--out", str(tmp_path / "o")]
    assert main([*args, "--methods", "lora:8,bogus"]) == 2
    assert "Unknown method 'bogus'" in capsys.readouterr().err
    assert main([*args, "--methods", "lora:8"]) == 1
    assert "has 2 lines but" in capsys.readouterr().err
    assert main(["compare", "--train", str(tmp_path / "nope.jsonl"), "--eval", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "o"), "--methods", "lora:8"]) == 2  # a usage error, before torch loads
    assert "does not exist" in capsys.readouterr().err


def test_cli_runs_a_comparison_and_resumes(tokenizer, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    make_tiny_llama(vocab=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    pairs = django_translation_pairs("fr")
    for split, n in (("train", 12), ("test", 4)):
        (tmp_path / f"{split}.en").write_text("\n".join(pairs[split]["source"][:n]) + "\n")
        (tmp_path / f"{split}.fr").write_text("\n".join(pairs[split]["target"][:n]) + "\n")
    args = ["compare", "--model", str(model_dir), "--train", str(tmp_path / "train.en"), str(tmp_path / "train.fr"),
            "--eval", str(tmp_path / "test.en"), str(tmp_path / "test.fr"), "--source-lang", "en",
            "--target-lang", "fr", "--methods", "base,lora:2", "--seeds", "0,1", "--steps", "2", "--batch-size", "2",
            "--eval-every", "1", "--max-new-tokens", "3", "--eval-batch-size", "3", "--out", str(tmp_path / "out")]
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # peft's, hidden by the CLI
    bars = capsys.readouterr().err
    assert "it/s]" not in bars and "s/it]" not in bars and "runs:" not in bars  # stderr is no terminal: no bars
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(stored["runs"]) == {"base@seed0", "lora:2@seed0", "lora:2@seed1"}
    assert stored["identity"]["config"]["eval_batch_size"] == 3 and stored["identity"]["data"]["validation"]
    capsys.readouterr()
    assert main(args) == 0
    shown = capsys.readouterr()
    assert shown.err.count("already done, skipped") == 3  # the CLI shows the library's logs, on stderr
    assert "already done, skipped" not in shown.out  # once: not on stdout as well


def test_a_learning_rate_grid_keeps_the_rate_with_the_lowest_validation_loss(tokenizer, data, tmp_path):
    grid = _config(lr_grid=(0.01, 30.0), max_steps=4, patience=None)
    run = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "grid", grid, model_id="tiny",
                  progress=False)["runs"]["lora:2@seed0"]
    search = run["lr_search"]
    assert len(search) == 2 and search[0]["best_val_loss"] != search[1]["best_val_loss"]
    best = min(search, key=lambda r: r["best_val_loss"])
    assert run["lr"] == best["lr"] and run["best_val_loss"] == best["best_val_loss"]
    # The evaluated model is the one trained at that rate: a run at that rate alone gives the same outputs.
    factor = best["lr"] / DEFAULT_LR["lora"]
    alone = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "alone",
                    _config(lr_grid=(factor,), max_steps=4, patience=None), model_id="tiny",
                    progress=False)["runs"]["lora:2@seed0"]
    assert alone["best_val_loss"] == run["best_val_loss"]
    assert read_outputs(tmp_path / "alone" / "outputs" / "lora_2@seed0.jsonl.gz") == \
        read_outputs(tmp_path / "grid" / "outputs" / "lora_2@seed0.jsonl.gz")


def test_results_folder_identity_holds_the_resolved_device_and_dtype(tokenizer, data, tmp_path):
    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(dtype="float32"), model_id="tiny",
            progress=False)
    identity = json.loads((out / "results.json").read_text())["identity"]
    assert (identity["device"], identity["dtype"]) == ("cpu", "float32")
    assert "dtype" not in identity["config"]  # 'auto' and 'float32' resolving alike are one configuration
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(dtype="auto"), model_id="tiny",
            progress=False, precision=Precision(torch.device("cpu"), torch.float32, True))  # auto as resolved here
    stored = json.loads((out / "results.json").read_text())
    stored["identity"]["dtype"] = "bfloat16"  # as if written by a bf16 run
    (out / "results.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="different configuration.*dtype"):
        compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), model_id="tiny", progress=False)


def test_a_diverged_training_is_no_result(tokenizer, data, tmp_path):
    """lora at 1e30: stopped as diverged, not evaluated, no adapter, marked in the table and the plot."""
    out = tmp_path / "cmp"
    results = compare(_loader(tokenizer), tokenizer, data, ["base", "lora:2"], [0], out,
                      _config(learning_rates={"lora": 1e30}, max_steps=6), model_id="tiny", progress=False)
    run = results["runs"]["lora:2@seed0"]
    assert run["stop_reason"] == "diverged" and run["diverged_step"] == 2 and run["scores"] is None
    assert not (out / "adapters" / "lora_2").exists() and not (out / "outputs" / "lora_2@seed0.jsonl.gz").exists()
    table = (out / "results.md").read_text()
    assert "| lora:2 | 2,048 | " in table and "| diverged | diverged | - | 0 |" in table
    assert "diverged at step 2" in table and (out / "results.png").is_file()
    assert results["runs"]["base@seed0"]["scores"]["bleu"] >= 0 and "intervals" not in run
    assert main(["report", str(out)]) == 0  # a folder with a diverged run renders again


def test_a_diverged_rate_loses_the_rate_search(tokenizer, data, tmp_path):
    grid = _config(lr_grid=(1.0, 1e33), max_steps=4, patience=None)
    results = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "grid", grid, model_id="tiny",
                      progress=False)
    run = results["runs"]["lora:2@seed0"]
    search = {t["lr"]: t for t in run["lr_search"]}
    assert search[DEFAULT_LR["lora"] * 1e33]["stop_reason"] == "diverged"
    assert run["lr"] == DEFAULT_LR["lora"] and run["scores"]["bleu"] >= 0
    assert (tmp_path / "grid" / "adapters" / "lora_2").is_dir()
    assert "diverged at step" in (tmp_path / "grid" / "results.md").read_text()


def test_a_resume_missing_a_trainings_outputs_names_it_and_the_fix(tokenizer, data, tmp_path):
    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(), model_id="tiny", progress=False)
    stored = json.loads((out / "results.json").read_text())
    (training,) = stored["trainings"]
    del stored["runs"]["lora:2@seed0"]  # as if killed before the run was chosen
    (out / "results.json").write_text(json.dumps(stored))
    (out / "outputs" / "lora_2@seed0.jsonl.gz").unlink()  # the training's outputs, stored once under the run's key
    with pytest.raises(ValueError, match=rf"is missing, so run lora:2@seed0 cannot take its training {training}; "
                                         rf"delete the entry '{training}' from .*results.json's \"trainings\""):
        compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(), model_id="tiny", progress=False)
    del stored["trainings"][training]  # what the message says to do
    (out / "results.json").write_text(json.dumps(stored))
    again = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(), model_id="tiny",
                    progress=False)
    assert again["runs"]["lora:2@seed0"]["scores"]["bleu"] >= 0


def test_report_names_a_run_without_scores_in_one_line(tokenizer, data, tmp_path, capsys):
    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), model_id="tiny", progress=False)
    stored = json.loads((out / "results.json").read_text())
    del stored["runs"]["base@seed0"]["scores"]
    (out / "results.json").write_text(json.dumps(stored))
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run base@seed0 has no scores" in err and "delete its entry" in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "lora=0"], "argument --learning-rates/--lr/--learning_rates: expected KEY=VALUE such as lora=1e-3, "
                         "got 'lora=0': must be above 0, got 0"),
    (["--lr", "lora=nan"], "must be a finite number, got 'nan'"),
    (["--lr", "lora=-1"], "must be above 0"),
    (["--lr-grid", "1,nan"], "argument --lr-grid/--lr_grid: expected float values, got '1,nan': must be a finite"),
    (["--epochs", "nan"], "argument --epochs/--num-train-epochs/--num_train_epochs: must be a finite number"),
    (["--warmup-ratio", "1"], "must be below 1, got 1"),
    (["--calibration-lr", "0"], "argument --calibration-lr/--calibration_lr: must be above 0"),
    (["--train", "a", "b", "c"], "--train: give one .jsonl file or dataset, or a SOURCE TARGET pair of text files, not 3."),
])
def test_compare_refuses_bad_numbers_and_files_as_usage_errors_before_loading(tmp_path, capsys, flags, message):
    (tmp_path / "t.jsonl").write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    args = ["compare", "--model", str(tmp_path / "no-model"), "--train", str(tmp_path / "t.jsonl"), "--eval",
            str(tmp_path / "t.jsonl"), "--methods", "lora:2", "--out", str(tmp_path / "out"), *flags]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_config_files_follow_the_same_number_rules(tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    (tmp_path / "c.yaml").write_text("lr:\n  lora: 0\n")
    assert main(["compare", "--config", str(tmp_path / "c.yaml"), "--train", str(tmp_path / "t.jsonl"), "--eval",
                 str(tmp_path / "t.jsonl"), "--methods", "lora:2", "--out", str(tmp_path / "out")]) == 2
    assert "got 'lora=0': must be above 0" in capsys.readouterr().err


def test_changed_settings_on_resume_are_a_usage_error(tokenizer, data, tmp_path):
    from peft_neft.errors import UsageError

    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), model_id="tiny", progress=False)
    with pytest.raises(UsageError, match="different configuration"):
        compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(max_steps=5), model_id="tiny")


def test_saved_adapters_carry_their_tokenizer_and_a_card_of_their_run(tokenizer, data, tmp_path):
    """A receiver gets the tokenizer (its chat template builds the prompts) and a card with the task, the exact
    prompt, where the data came from and the scores with their signatures; LoRA's card too, no peft template."""
    compare(_loader(tokenizer), tokenizer, data, ["lora:2", "neft-random:match-lora:2"], [0], tmp_path / "out",
            _config(max_steps=2), model_id="tiny", progress=False, data_name="the test's pairs")
    for name in ("lora_2", "neft-random_match-lora_2"):
        folder = tmp_path / "out" / "adapters" / name
        card = (folder / "README.md").read_text()
        assert "More Information Needed" not in card and "https://github.com/peft-neft/peft-neft" in card
        assert "- data: the test's pairs: " in card and "### Prompt format" in card
        assert "{source}<|im_end|>" in card and "- bleu: " in card and "`nrefs:1|" in card
        assert AutoTokenizer.from_pretrained(folder).chat_template == tokenizer.chat_template
