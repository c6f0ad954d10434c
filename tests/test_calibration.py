"""Calibration: the short fine-tune restores the model, repeats with a seed; gradient scores; SmolLM2 end to end."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from peft import get_peft_model

from conftest import make_tiny_llama, make_tiny_tokenizer
from peft_neft import NeFTConfig
from peft_neft.cli import main
from peft_neft.embedded_model import load_model_and_tokenizer
from peft_neft.selection import (SCORERS, Budget, NeuronCalibrationCallback, NeuronSelection, calibrate,
                                 get_scorer, gradient_scores, select_neurons)
from peft_neft.tasks import TASKS, encode_pairs, make_collator

COLLATE = make_collator(make_tiny_tokenizer())  # pads with <pad> = 0, labels with -100


def toy_data(n=12, seed=0, vocab=128):
    gen = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        length = 6 + i % 5
        ids = torch.randint(1, vocab, (length,), generator=gen).tolist()
        data.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * 3 + ids[3:]})
    return data


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("frugal", [False, True])
def test_calibration_restores_the_model(frugal):
    model = make_tiny_llama()
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)  # a user's frozen parameter stays frozen
    user_grad = torch.ones_like(model.lm_head.weight)
    model.lm_head.weight.grad = user_grad  # a gradient the user accumulated survives
    before = state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    scores = calibrate(model, toy_data(), collate_fn=COLLATE, steps=3, lr=1e-3, batch_size=4, frugal=frugal,
                       progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.lm_head.weight.grad is user_grad and torch.equal(user_grad, torch.ones_like(user_grad))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "lm_head.weight")
    assert not model.training  # eval() as before
    assert scores.method == "cosine" and scores.metadata["steps"] == 3 and len(scores.metadata["losses"]) == 3
    assert set(scores.scores) == {f"model.layers.{i}.mlp.{m}" for i in (0, 1) for m in ("up_proj", "down_proj")}
    for s in scores.scores.values():
        assert not torch.isnan(s).any() and (s <= 1).all() and (s < 1).any()


def test_callback_sees_every_step_with_the_fine_tuned_weights():
    model = make_tiny_llama()
    original = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    seen = []
    scores = calibrate(model, toy_data(), collate_fn=COLLATE, steps=3, lr=1e-3, batch_size=4, progress=False,
                       callback=lambda step, loss: seen.append(
                           (step, loss, torch.equal(model.model.layers[0].mlp.up_proj.weight, original))))
    assert [s for s, _, _ in seen] == [1, 2, 3]
    assert [loss for _, loss, _ in seen] == scores.metadata["losses"]
    assert not any(unchanged for _, _, unchanged in seen)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, original)


def test_calibration_is_reproducible_with_a_seed():
    runs = [calibrate(make_tiny_llama(), toy_data(), collate_fn=COLLATE, steps=3, lr=1e-3, batch_size=4, seed=s,
                      progress=False)
            for s in (0, 0, 1)]
    assert all(torch.equal(runs[0].scores[k], runs[1].scores[k]) for k in runs[0].scores)
    assert any(not torch.equal(runs[0].scores[k], runs[2].scores[k]) for k in runs[0].scores)


def test_calibration_scores_match_a_real_fine_tune():
    """calibrate == train a copy with the same optimizer and data order, then score the two models."""
    import copy

    from peft_neft.selection import score_models

    model, data = make_tiny_llama(), toy_data(8)
    scores = calibrate(model, data, collate_fn=COLLATE, steps=2, lr=1e-3, batch_size=8, frugal=True, progress=False)
    tuned = copy.deepcopy(model)
    weights = [m.weight for n, m in tuned.named_modules() if n.endswith(("up_proj", "down_proj"))]
    for p in tuned.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    optimizer = torch.optim.AdamW(weights, lr=1e-3)
    batch = COLLATE(data)  # one batch holds all 8 examples; the order does not change the mean loss
    tuned.train()
    for _ in range(2):
        tuned(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    expected = score_models(model, tuned)
    for name in expected.scores:
        assert (1 - expected.scores[name]).max() > 1e-5  # the rows moved far more than the tolerance
        # float32 sums in another example order differ in the last bits only (one float32 ulp at 1.0 is 1.2e-7)
        torch.testing.assert_close(scores.scores[name], expected.scores[name], rtol=0, atol=1e-7)


def test_gradient_scores_are_minus_the_row_gradient_norm():
    model, data = make_tiny_llama(), toy_data(4)
    before = state(model)
    scores = gradient_scores(model, data, collate_fn=COLLATE, batches=1, batch_size=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.zero_grad()
    model(**COLLATE(data)).loss.backward()
    grad = model.model.layers[1].mlp.down_proj.weight.grad
    torch.testing.assert_close(scores.scores["model.layers.1.mlp.down_proj"], -grad.double().norm(dim=1))
    assert scores.method == "gradient" and (torch.cat(list(scores.scores.values())) <= 0).all()
    assert select_neurons(scores, percent=2).num_neurons > 0


def test_bad_calibration_input():
    model = make_tiny_llama()
    with pytest.raises(ValueError, match="steps"):
        calibrate(model, toy_data(), collate_fn=COLLATE, steps=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        calibrate(model, [], collate_fn=COLLATE, steps=1, progress=False)
    with pytest.raises(ValueError, match="Unknown target modules"):
        gradient_scores(model, toy_data(), collate_fn=COLLATE, target_modules=["mlp_up"])


def multi30k_pairs(shared_data, n):
    with gzip.open(shared_data / "multi30k" / "train.en.gz", "rt") as en, gzip.open(shared_data / "multi30k" / "train.fr.gz", "rt") as fr:
        return [(e.strip(), f.strip()) for e, f, _ in zip(en, fr, range(n))]


@pytest.mark.slow
def test_smollm2_calibration_gives_a_selection_peft_accepts(smollm2_dir, shared_data):
    model, tokenizer = load_model_and_tokenizer(smollm2_dir)
    sources, targets = zip(*multi30k_pairs(shared_data, 16))
    data = encode_pairs(tokenizer, TASKS["translation"].instruction_for("en", "fr"), sources, targets, 48, 16)
    assert data[0]["labels"][0] == -100 and data[0]["labels"][-1] == tokenizer.eos_token_id
    before = model.model.layers[3].mlp.up_proj.weight.clone()
    collate = make_collator(tokenizer)
    scores = calibrate(model, data, collate_fn=collate, steps=2, batch_size=2, lr=1e-5, frugal=True, progress=False)
    assert torch.equal(model.model.layers[3].mlp.up_proj.weight, before)
    assert len(scores.scores) == 60 and scores.total_params == model.num_parameters()
    selection = select_neurons(scores, percent=1.0, model=model)
    assert abs(selection.num_params - 0.01 * scores.total_params) <= 1536
    assert len(torch.unique(torch.cat([s for s in scores.scores.values()]))) > 1000  # float64 resolves tiny changes
    peft_model = get_peft_model(model, NeFTConfig.from_selection(selection))
    assert peft_model.get_nb_trainable_parameters()[0] == selection.num_params
    batch = collate(data[:2])
    assert torch.isfinite(peft_model(**batch).loss)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradient", "taylor", "activation"])
def test_calibrate_cli_on_smollm2(smollm2_dir, shared_data, tmp_path, capsys, method):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"source": p, "target": c}) + "\n" for p, c in multi30k_pairs(shared_data, 4)))
    out = tmp_path / "sel.safetensors"
    code = main(["calibrate", "--model", str(smollm2_dir), "--data", str(data), "--method", method, "--steps", "2",
                 "--batch-size", "2", "--lora-rank", "1", "--out", str(out)])
    assert code == 0
    selection = NeuronSelection.load(out)
    assert selection.metadata["method"] == method and len(selection.scores) == 60
    assert selection.metadata["budget"]["spec"] == {"lora_rank": 1, "num_params": 30 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))}
    assert "layer" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no fields"}) + "\n")
    assert main(["calibrate", "--data", str(bad), "--steps", "1", "--percent", "1", "--out", str(out)]) == 1
    assert "has no field(s) ['source', 'target']" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--percent", "150"], "percent must lie in (0, 100]"),
    (["--percent", "nan"], "argument --percent: must be a finite number, got 'nan'"),
    (["--percent", "1", "--max-source-tokens", "0"], "argument --max-source-tokens/--max_source_tokens: must be at least 1"),
    (["--percent", "1", "--max-target-tokens", "0"], "argument --max-target-tokens/--max_target_tokens: must be at least 1"),
    (["--percent", "1", "--max-examples", "0"], "argument --max-examples/--max_examples: must be at least 1"),
    (["--percent", "1", "--lr", "0"], "argument --lr/--learning-rate/--learning_rate: must be above 0, got 0"),
    (["--percent", "1", "--lr=-1e-3"], "argument --lr/--learning-rate/--learning_rate: must be above 0"),
    (["--percent", "1", "--lr", "inf"], "argument --lr/--learning-rate/--learning_rate: must be a finite number"),
    (["--percent", "1", "--lr", "nan"], "argument --lr/--learning-rate/--learning_rate: must be a finite number"),
    (["--percent", "1", "--steps", "0"], "argument --steps/--max-steps/--max_steps: must be at least 1"),
    (["--percent", "1", "--steps", "1.5"], "argument --steps/--max-steps/--max_steps: expected a whole number, got '1.5'"),
    (["--num-neurons", "-3"], "argument --num-neurons/--num_neurons: must be at least 1, got -3"),
    (["--lora-rank", "0"], "argument --lora-rank/--lora_rank: must be at least 1"),
])
def test_calibrate_cli_refuses_bad_arguments_before_any_work(tmp_path, capsys, flags, message):
    data = tmp_path / "d.jsonl"  # present: a missing data file is refused first, before torch is imported
    data.write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    assert main(["calibrate", "--data", str(data), "--out", str(tmp_path / "s.safetensors"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_calibrate_cli_refuses_null_text(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"source": "a", "target": "b"}) + "\n" + json.dumps({"source": None, "target": "c"}) + "\n")
    assert main(["calibrate", "--data", str(data), "--percent", "1", "--out", str(tmp_path / "s.safetensors")]) == 1
    assert "row 2: 'source' and 'target' must be text, got None" in capsys.readouterr().err


# A chat template on the tiny word-level tokenizer: n1 <system> n2 <user> n3, the generation prompt n4.
TINY_CHAT_TEMPLATE = ("{% for m in messages %}n{{ loop.index }} {{ m['content'] }} {% endfor %}"
                      "{% if add_generation_prompt %}n3 n4 {% endif %}")


def _spy_on_select_neurons(monkeypatch):
    """Counts the calls of the real select_neurons from the callback and from the command."""
    import peft_neft.selection
    import peft_neft.selection.calibration_callback as callback_module

    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("budget"))
        return select_neurons(*args, **kwargs)

    monkeypatch.setattr(callback_module, "select_neurons", counted)
    monkeypatch.setattr(peft_neft.selection, "select_neurons", counted)
    return calls


@pytest.mark.parametrize("method", sorted(SCORERS))
def test_calibrate_cli_scores_the_templated_prompts_training_uses_and_selects_once(tmp_path, capsys, monkeypatch,
                                                                                   method):
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    model_dir = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    sources = [f"n{s} n{s + 1} n{s + 5}" for s in range(10, 70, 3)]
    targets = [f"n{s + 2} n{s + 3}" for s in range(10, 70, 3)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"source": a, "target": b}) + "\n" for a, b in zip(sources, targets)))
    out = tmp_path / "sel.safetensors"
    calls = _spy_on_select_neurons(monkeypatch)
    assert main(["calibrate", "--model", str(model_dir), "--data", str(data), "--method", method, "--steps", "3",
                 "--lr", "1e-2", "--batch-size", "4", "--lora-rank", "1", "--dtype", "float32", "--target-lang", "de",
                 "--spread", "per-module", "--out", str(out)]) == 0
    assert "selection written to" in capsys.readouterr().out
    assert len(calls) == 1 and calls[0].lora_rank == 1  # one selection, one budget made once
    selection = NeuronSelection.load(out)
    assert selection.metadata["method"] == method and selection.metadata["spread"] == "per-module"
    assert selection.metadata["budget"]["spec"] == {"lora_rank": 1, "num_params": 2 * (64 + 48 + 48 + 64 + 3 * 96)}
    # What training encodes (compare: the task's instruction, the chat template, the collator), scored directly.
    rows = encode_pairs(tokenizer, TASKS["translation"].instruction_for("en", "de"), sources, targets, 256, 128)
    assert rows[0]["input_ids"][0] == tokenizer.convert_tokens_to_ids("n1")  # the template's system turn
    monkeypatch.undo()
    expected = get_scorer(method).score(make_tiny_llama(), rows, collate_fn=make_collator(tokenizer), steps=3,
                                        batch_size=4, lr=1e-2, seed=0, target_modules=["up_proj", "down_proj"])
    assert set(selection.scores) == set(expected.scores)
    for name, scores in expected.scores.items():
        torch.testing.assert_close(selection.scores[name], scores, rtol=0, atol=0)


def test_calibrate_returns_the_callbacks_selection(monkeypatch):
    calls = _spy_on_select_neurons(monkeypatch)
    budget = Budget(num_neurons=7)
    selection = calibrate(make_tiny_llama(), toy_data(), collate_fn=COLLATE, steps=2, lr=1e-3, batch_size=4,
                          progress=False, budget=budget, strategy="reversed")
    assert calls == [budget] and isinstance(selection, NeuronSelection) and selection.num_neurons == 7
    assert selection.metadata["strategy"] == "reversed" and selection.metadata["scores_metadata"]["source"] == "calibrate"
    monkeypatch.undo()
    scores = calibrate(make_tiny_llama(), toy_data(), collate_fn=COLLATE, steps=2, lr=1e-3, batch_size=4,
                       progress=False)
    again = select_neurons(scores, budget=budget, strategy="reversed")
    assert {n: r.tolist() for n, r in selection.rows.items()} == {n: r.tolist() for n, r in again.rows.items()}


def test_an_impossible_budget_fails_before_the_fine_tune():
    model, data = make_tiny_llama(), toy_data(8)
    losses = []
    with pytest.raises(ValueError, match="exceeds everything"):
        calibrate(model, data, collate_fn=COLLATE, steps=2, lr=1e-3, batch_size=8, progress=False,
                  budget=Budget(num_params=10**12), callback=lambda step, loss: losses.append(loss))
    assert losses == []  # no optimizer step ran


def test_a_diverged_calibration_refuses_to_write_a_selection_and_names_the_rate(tmp_path):
    """Non-finite weights (or scores) after K steps would rank as 'unchanged' rows: refused, nothing written."""
    model, out, lr = make_tiny_llama(), tmp_path / "sel.safetensors", 1e30
    before = state(model)
    with pytest.raises(ValueError, match=r"diverged: after 3 steps the (weights|scores) of model\.layers\..* are not "
                                         r"finite.*Lower the learning rate \(now 1e\+30;"):
        calibrate(model, toy_data(), collate_fn=COLLATE, steps=3, lr=lr, batch_size=4, progress=False,
                  budget=Budget(num_neurons=4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # still restored
    callback = NeuronCalibrationCallback(3, out, budget=Budget(num_neurons=4))
    with pytest.raises(ValueError, match="diverged"):
        calibrate_with(callback, lr)
    assert not out.exists()


def calibrate_with(callback, lr):
    """A user's full fine-tune with the callback (Trainer, AdamW at ``lr``)."""
    import tempfile

    from transformers import Trainer, TrainingArguments

    model = make_tiny_llama().train()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=4, per_device_train_batch_size=4, learning_rate=lr,
                                 lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no",
                                 remove_unused_columns=False, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=toy_data(), data_collator=COLLATE, callbacks=[callback]).train()
