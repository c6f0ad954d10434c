"""NeFT variants in ``compare``: a method names its scorer, spread and targets; calibrations are shared and cached."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoTokenizer

from conftest import make_tiny_llama
from peft_neft.cli import main
from peft_neft.compare import CompareConfig, compare, paired_baselines, parse_method, parse_methods, select_for
from peft_neft.compare.methods import calibration_key, neft_targets, shape_scores
from peft_neft.errors import UsageError
from peft_neft.tasks import django_translation_pairs


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.parametrize("spec", ["base", "full", "embed", "in-out", "lora:8", "neft:1", "neft:0.5%",
                                  "neft:match-lora:8", "neft-random:match-lora:8", "neft-reversed:2"])
def test_existing_specs_keep_their_keys_and_today_s_behaviour(spec):
    method = parse_method(spec)
    assert method.spec == spec
    if method.kind == "neft":
        assert (method.score, method.spread, method.targets) == ("cosine", "global", None)


@pytest.mark.parametrize(("text", "spec"), [
    ("neft[score=gradient]:match-lora:8", "neft[score=gradient]:match-lora:8"),
    ("NEFT[spread=module, score=gradient]:match-lora:8", "neft[score=gradient,spread=per-module]:match-lora:8"),
    ("neft[spread=per-layer]:1%", "neft[spread=per-layer]:1%"),
    ("neft[spread=layer,targets=all-linear]:2", "neft[spread=per-layer,targets=all-linear]:2"),
    ("neft[score=cosine,spread=global]:match-lora:8", "neft:match-lora:8"),  # the defaults: today's key
    ("neft[]:match-lora:8", "neft:match-lora:8"),
    ("neft-random[targets=all-linear]:match-lora:8", "neft-random[targets=all-linear]:match-lora:8"),
    ("neft-reversed[targets=q_proj+v_proj]:1", "neft-reversed[targets=q_proj+v_proj]:1"),
])
def test_a_variant_s_canonical_spec_is_its_key(text, spec):
    method = parse_method(text)
    assert method.spec == spec and parse_method(spec) == method


def test_a_variant_s_settings():
    method = parse_method("neft-reversed[score=gradient,spread=module,targets=all-linear]:match-lora:4")
    assert (method.kind, method.strategy, method.rank) == ("neft", "reversed", 4)
    assert (method.score, method.spread, method.targets) == ("gradient", "per-module", "all-linear")
    assert parse_method("neft[targets=q_proj+v_proj]:1").targets == "q_proj+v_proj"


@pytest.mark.parametrize(("text", "message"), [
    ("neft[scorer=gradient]:1", r"Unknown option 'scorer'.*score, spread, targets"),
    ("neft[score=nope]:1", r"Unknown score 'nope'.*cosine.*gradient"),
    ("neft[spread=wide]:1", r"Unknown spread 'wide'.*global, per-layer \(layer\), per-module \(module\)"),
    ("neft[targets=]:1", r"targets.*all-linear"),
    ("neft[score]:1", r"key=value"),
    ("neft[spread=module,spread=layer]:1", r"twice"),
    ("neft-random[score=gradient]:1", r"random rows.*no score"),
    ("lora[score=gradient]:8", r"Only NeFT methods take options"),
    ("neft[score=gradient:1", r"Unknown method"),
    ("neft-random[calibration=x]:1", r"random rows.*no calibration"),
    ("neft[score=taylor,calibration=x]:1", r"stored calibration.*its own score"),
    ("neft[targets=all-linear,calibration=x]:1", r"stored calibration.*its own modules"),
    ("neft[calibration=a/b]:1", r"calibration.*a name"),
])
def test_bad_variants_are_usage_errors_naming_the_valid_choices(text, message):
    with pytest.raises(UsageError, match=message):
        parse_method(text)


def test_a_method_list_splits_at_the_commas_between_methods_only():
    methods = parse_methods("lora:8, neft[score=gradient,spread=module]:match-lora:8,neft:match-lora:8")
    assert [m.spec for m in methods] == ["lora:8", "neft[score=gradient,spread=per-module]:match-lora:8",
                                         "neft:match-lora:8"]
    with pytest.raises(ValueError, match="twice"):
        parse_methods("neft[spread=module]:1,neft[spread=per-module]:1")


def test_the_paper_s_selection_is_paired_with_lora_and_any_other_also_with_it_and_random_rows():
    assert paired_baselines("neft:match-lora:8") == ("lora:8",) and paired_baselines("neft:2") == ()
    assert paired_baselines("neft[score=gradient,spread=per-module]:match-lora:8") == (
        "lora:8", "neft:match-lora:8", "neft-random:match-lora:8")
    assert paired_baselines("neft-random[targets=all-linear]:match-lora:8") == (
        "lora:8", "neft:match-lora:8", "neft-random:match-lora:8")
    assert paired_baselines("neft-random:match-lora:8") == ("lora:8", "neft:match-lora:8")
    assert paired_baselines("neft-reversed:2") == ("neft:2", "neft-random:2")
    assert paired_baselines("lora:8") == paired_baselines("base") == ()


def test_calibrations_are_keyed_by_scorer_targets_and_seed_and_the_paper_s_keeps_its_file_name():
    keys = {spec: calibration_key(parse_method(spec), 3) for spec in (
        "neft:match-lora:8", "neft-reversed:1", "neft[spread=per-module]:2", "neft[score=gradient]:1",
        "neft-reversed[score=gradient,spread=layer]:1", "neft[targets=all-linear]:1",
        "neft[score=gradient,targets=all-linear]:1")}
    assert keys["neft:match-lora:8"] == keys["neft-reversed:1"] == keys["neft[spread=per-module]:2"] == \
        "calibration@seed3"  # the existing cache of the paper's calibration is found
    assert keys["neft[score=gradient]:1"] == keys["neft-reversed[score=gradient,spread=layer]:1"] == \
        "calibration[score=gradient]@seed3"
    assert keys["neft[targets=all-linear]:1"] == "calibration[targets=all-linear]@seed3"
    assert keys["neft[score=gradient,targets=all-linear]:1"] == "calibration[score=gradient,targets=all-linear]@seed3"
    assert calibration_key(parse_method("neft-random:1"), 0) is None and calibration_key(parse_method("lora:8"), 0) is None


def test_targets_and_spread_decide_where_the_rows_go():
    model, config = make_tiny_llama(), CompareConfig()
    assert neft_targets(parse_method("neft:1"), config) == ("up_proj", "down_proj")
    assert neft_targets(parse_method("neft[targets=q_proj+v_proj]:1"), config) == ("q_proj", "v_proj")
    assert neft_targets(parse_method("neft:1"), CompareConfig(neft_target_modules=("o_proj",))) == ("o_proj",)
    everything = parse_method("neft-random[targets=all-linear]:match-lora:2")
    rows = select_for(model, everything, shape_scores(model, neft_targets(everything, config)), 0).rows
    kinds = {name.rsplit(".", 1)[-1] for name in rows}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"} & kinds and "lm_head" not in kinds
    lora_only = CompareConfig(lora_target_modules=("q_proj",))
    assert neft_targets(everything, lora_only) == ("q_proj",)  # all-linear: LoRA's modules, as the comparison has them

    scores = shape_scores(model, config.neft_target_modules)

    def skewed(high) -> object:  # the rows of the modules ``high`` picks score highest (reversed takes them first)
        values = {n: torch.full_like(s, 1.0 if high(n) else 0.0) for n, s in scores.scores.items()}
        return type(scores)(values, scores.in_features, scores.total_params, "test", {})

    def where(spec, high, part):
        return {n.split(".")[part] for n in select_for(model, parse_method(spec), skewed(high), 0).rows}

    top_block = lambda n: n.startswith("model.layers.1.")  # noqa: E731
    assert where("neft-reversed:5", top_block, 2) == {"1"}  # the global ranking takes the top block only
    assert where("neft-reversed[spread=layer]:5", top_block, 2) == {"0", "1"}  # each block its share
    down = lambda n: n.endswith("down_proj")  # noqa: E731
    assert where("neft-reversed:5", down, -1) == {"down_proj"}
    assert where("neft-reversed[spread=module]:5", down, 0) == {"model"}  # names come back as the model's
    per_module = select_for(model, parse_method("neft-reversed[spread=module]:5"), skewed(down), 0)
    assert set(per_module.rows) == set(scores.scores)  # every target module its share
    assert per_module.metadata["in_features"] == scores.in_features


def _write_pairs(folder, tokenizer):
    model_dir = folder / "tiny"
    make_tiny_llama(vocab=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    pairs = django_translation_pairs("fr")
    for split, n in (("train", 12), ("test", 3)):
        (folder / f"{split}.en").write_text("\n".join(pairs[split]["source"][:n]) + "\n")
        (folder / f"{split}.fr").write_text("\n".join(pairs[split]["target"][:n]) + "\n")
    return ["compare", "--model", str(model_dir), "--train", str(folder / "train.en"), str(folder / "train.fr"),
            "--eval", str(folder / "test.en"), str(folder / "test.fr"), "--max-steps", "5", "--batch-size", "2",
            "--eval-every", "5", "--max-new-tokens", "2", "--eval-batch-size", "3", "--calibration-steps", "2",
            "--dtype", "float32", "--no-progress"]


def test_compare_trains_lora_and_a_neft_variant_in_one_folder(tokenizer, tmp_path, capsys):
    """The issue's done-when command, on a tiny saved model: both train, one calibration serves two variants."""
    args = [*_write_pairs(tmp_path, tokenizer), "--out", str(tmp_path / "out"), "--methods",
            "lora:2,neft[score=taylor,spread=module]:match-lora:2,neft-reversed[score=taylor]:match-lora:2"]
    assert main(args) == 0
    logged = capsys.readouterr().err  # the CLI shows the library's logs on stderr
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(stored["runs"]) == {"lora:2@seed0", "neft[score=taylor,spread=per-module]:match-lora:2@seed0",
                                   "neft-reversed[score=taylor]:match-lora:2@seed0"}
    variant = stored["runs"]["neft[score=taylor,spread=per-module]:match-lora:2@seed0"]
    assert variant["calibration"]["score"] == "taylor" and variant["steps_run"] == 5
    assert logged.count("calibration[score=taylor]@seed0: computed") == 1 and "cached" not in logged
    # the calibration is a job of the queue: LoRA, which needs none, trains first
    assert logged.index("lora:2@seed0: bleu") < logged.index("calibration[score=taylor]@seed0: computed")
    assert "neft[score=taylor,spread=per-module]:match-lora:2" in (tmp_path / "out" / "results.md").read_text()
    assert not (tmp_path / "out" / "checkpoints").exists()  # the calibration cache goes once every run is done
    card = (tmp_path / "out" / "adapters" / "lora_2" / "README.md").read_text()
    assert "train: train.en + train.fr; test: test.en + test.fr: " in card  # the data's names, no local folders
    assert str(tmp_path) not in card


def test_a_config_file_names_variants_as_text_or_as_mappings(tokenizer, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("methods:\n  - lora:2\n  - {method: 'neft:match-lora:2', score: gradient, spread: module}\n")
    args = [*_write_pairs(tmp_path, tokenizer), "--config", str(config), "--out", str(tmp_path / "out"),
            "--max-steps", "1", "--eval-every", "1"]
    assert main(args) == 0
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(stored["runs"]) == {"lora:2@seed0", "neft[score=gradient,spread=per-module]:match-lora:2@seed0"}
    config.write_text("methods:\n  - {method: 'neft:1', spread: wide}\n")
    assert main([*args, "--overwrite"]) == 2
    assert "Unknown spread 'wide'" in capsys.readouterr().err


def test_a_stored_calibration_is_named_in_the_brackets_and_keyed_apart_from_the_seeds():
    method = parse_method("NEFT[calibration=Multi30k, spread=layer]:match-lora:8")
    assert method.spec == "neft[spread=per-layer,calibration=multi30k]:match-lora:8"
    assert method.calibration == "multi30k" and parse_method(method.spec) == method
    assert calibration_key(method, 0) == calibration_key(method, 2) == "calibration[stored=multi30k]"
    assert paired_baselines(method.spec) == ("lora:8", "neft:match-lora:8", "neft-random:match-lora:8")


def _stored_calibration(path, model_dir, tokenizer):
    """A calibration computed elsewhere (``taylor`` on other pairs), cached as a comparison caches it."""
    from transformers import AutoModelForCausalLM

    from peft_neft.selection.neuron_scores import save_scores
    from peft_neft.selection.scorers import get_scorer
    from peft_neft.tasks import encode_pairs
    from peft_neft.tasks import make_collator

    pairs = django_translation_pairs("de")["train"]
    rows = encode_pairs(tokenizer, "Translate.", pairs["source"][:8], pairs["target"][:8], 32, 32)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    scores = get_scorer("taylor").score(model, rows, collate_fn=make_collator(tokenizer), steps=2, batch_size=4,
                                        lr=1e-4, seed=0, target_modules=("up_proj", "down_proj"), progress=False)
    save_scores(path, scores, {"score": "taylor", "steps": 2})
    return scores


def test_compare_trains_neft_on_rows_a_stored_calibration_selects(tokenizer, tmp_path, capsys):
    """The paper's Trans: rows chosen on another task's calibration, at this comparison's budget; the computed
    calibrations are kept in the results folder, where a later call (and another comparison) finds them."""
    from peft_neft import NeuronSelection
    from peft_neft.compare.methods import select_for

    args = _write_pairs(tmp_path, tokenizer)
    stored = tmp_path / "elsewhere.safetensors"
    scores = _stored_calibration(stored, tmp_path / "tiny", tokenizer)
    out = tmp_path / "out"
    spec = "neft[calibration=other]:match-lora:2"
    assert main([*args, "--out", str(out), "--methods", f"neft:match-lora:2,{spec}",
                 "--stored-calibration", f"other={stored}"]) == 0
    logged = capsys.readouterr().err
    run = json.loads((out / "results.json").read_text())["runs"][f"{spec}@seed0"]
    assert run["calibration"]["score"] == "taylor" and run["calibration"]["stored"] == {
        "name": "other", "file": str(stored), "sha256": hashlib.sha256(stored.read_bytes()).hexdigest()}
    model = make_tiny_llama(vocab=len(tokenizer))
    expected = select_for(model, parse_method(spec), scores, 0)
    trained = NeuronSelection.load(out / "adapters" / "neft_calibration_other_match-lora_2" / "selection.safetensors")
    assert {n: r.tolist() for n, r in trained.rows.items()} == {n: r.tolist() for n, r in expected.rows.items()}
    assert "calibration[stored=other]: from" in logged and "calibration[stored=other]: computed" not in logged
    kept = out / "calibrations" / "calibration@seed0.safetensors"  # the computed one, kept for reuse
    assert kept.is_file() and stored.is_file() and not (out / "calibrations" / "calibration[stored=other].safetensors").exists()
    assert not (out / "checkpoints").exists()
    # a later call in the same folder (a widened grid) reuses the kept calibration instead of computing it again
    assert main([*args, "--out", str(out), "--methods", "neft:match-lora:2", "--lr-grid", "1,2"]) == 0
    logged = capsys.readouterr().err
    assert "calibration@seed0: cached" in logged and "calibration@seed0: computed" not in logged


def test_a_stored_calibration_that_is_missing_or_from_another_model_is_refused_before_training(tokenizer, tmp_path,
                                                                                                 capsys):
    args = [*_write_pairs(tmp_path, tokenizer), "--out", str(tmp_path / "out"), "--methods",
            "neft[calibration=other]:match-lora:2"]
    assert main(args) == 2
    assert "--stored-calibration other=FILE" in capsys.readouterr().err
    assert main([*args, "--stored-calibration", f"other={tmp_path / 'nope.safetensors'}"]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    wider = tmp_path / "wider"
    make_tiny_llama(vocab=len(tokenizer), intermediate=48).save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    _stored_calibration(tmp_path / "wider.safetensors", wider, tokenizer)
    assert main([*args, "--stored-calibration", f"other={tmp_path / 'wider.safetensors'}"]) == 2
    err = capsys.readouterr().err
    assert "another base model" in err and "other" in err
    assert not (tmp_path / "out" / "results.json").exists()
