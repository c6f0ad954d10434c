"""Calibration: the short fine-tune restores the model, repeats with a seed; gradient scores; SmolLM2 end to end."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from peft import get_peft_model

from conftest import make_tiny_llama
from peft_neft import NeFTConfig
from peft_neft.selection import calibrate, gradient_scores, pad_collate, tokenize_pair
from peft_neft.cli import main
from peft_neft.embedded_model import load_model_and_tokenizer
from peft_neft.selection import NeuronSelection, select_neurons


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
    scores = calibrate(model, toy_data(), steps=3, lr=1e-3, batch_size=4, frugal=frugal, progress=False)
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
    scores = calibrate(model, toy_data(), steps=3, lr=1e-3, batch_size=4, progress=False,
                       callback=lambda step, loss: seen.append(
                           (step, loss, torch.equal(model.model.layers[0].mlp.up_proj.weight, original))))
    assert [s for s, _, _ in seen] == [1, 2, 3]
    assert [loss for _, loss, _ in seen] == scores.metadata["losses"]
    assert not any(unchanged for _, _, unchanged in seen)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, original)


def test_calibration_is_reproducible_with_a_seed():
    runs = [calibrate(make_tiny_llama(), toy_data(), steps=3, lr=1e-3, batch_size=4, seed=s, progress=False)
            for s in (0, 0, 1)]
    assert all(torch.equal(runs[0].scores[k], runs[1].scores[k]) for k in runs[0].scores)
    assert any(not torch.equal(runs[0].scores[k], runs[2].scores[k]) for k in runs[0].scores)


def test_calibration_scores_match_a_real_fine_tune():
    """calibrate == train a copy with the same optimizer and data order, then score the two models."""
    import copy

    from peft_neft.selection import score_models

    model, data = make_tiny_llama(), toy_data(8)
    scores = calibrate(model, data, steps=2, lr=1e-3, batch_size=8, frugal=True, progress=False)
    tuned = copy.deepcopy(model)
    weights = [m.weight for n, m in tuned.named_modules() if n.endswith(("up_proj", "down_proj"))]
    for p in tuned.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    optimizer = torch.optim.AdamW(weights, lr=1e-3)
    batch = pad_collate(0)(data)  # one batch holds all 8 examples; the order does not change the mean loss
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
    scores = gradient_scores(model, data, batches=1, batch_size=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.zero_grad()
    model(**pad_collate(0)(data)).loss.backward()
    grad = model.model.layers[1].mlp.down_proj.weight.grad
    torch.testing.assert_close(scores.scores["model.layers.1.mlp.down_proj"], -grad.double().norm(dim=1))
    assert scores.method == "gradient" and (torch.cat(list(scores.scores.values())) <= 0).all()
    assert select_neurons(scores, percent=2).num_neurons > 0


def test_collate_pads_and_masks():
    batch = pad_collate(7)([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [-100, 2, 3]},
                            {"input_ids": [4], "attention_mask": [1], "labels": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    with pytest.raises(ValueError, match="tokenize them first"):
        pad_collate(0)([{"text": "hello"}])


def test_bad_calibration_input():
    model = make_tiny_llama()
    with pytest.raises(ValueError, match="steps"):
        calibrate(model, toy_data(), steps=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        calibrate(model, [], steps=1, progress=False)
    with pytest.raises(ValueError, match="Unknown target modules"):
        gradient_scores(model, toy_data(), target_modules=["mlp_up"])


def multi30k_pairs(shared_data, n):
    with gzip.open(shared_data / "multi30k" / "train.en.gz", "rt") as en, gzip.open(shared_data / "multi30k" / "train.fr.gz", "rt") as fr:
        return [(f"Translate English to French: {e.strip()}\nFrench:", " " + f.strip()) for e, f, _ in zip(en, fr, range(n))]


@pytest.mark.slow
def test_smollm2_calibration_gives_a_selection_peft_accepts(smollm2_dir, shared_data):
    model, tokenizer = load_model_and_tokenizer(smollm2_dir)
    data = [tokenize_pair(tokenizer, p, c, max_length=64) for p, c in multi30k_pairs(shared_data, 16)]
    assert data[0]["labels"][0] == -100 and data[0]["labels"][-1] == tokenizer.eos_token_id
    before = model.model.layers[3].mlp.up_proj.weight.clone()
    scores = calibrate(model, data, steps=2, batch_size=2, lr=1e-5, frugal=True, progress=False)
    assert torch.equal(model.model.layers[3].mlp.up_proj.weight, before)
    assert len(scores.scores) == 60 and scores.total_params == model.num_parameters()
    selection = select_neurons(scores, percent=1.0, model=model)
    assert abs(selection.num_params - 0.01 * scores.total_params) <= 1536
    assert len(torch.unique(torch.cat([s for s in scores.scores.values()]))) > 1000  # float64 resolves tiny changes
    peft_model = get_peft_model(model, NeFTConfig(neurons=selection))
    assert peft_model.get_nb_trainable_parameters()[0] == selection.num_params
    batch = pad_collate(tokenizer.pad_token_id)(data[:2])
    assert torch.isfinite(peft_model(**batch).loss)


@pytest.mark.slow
def test_calibrate_cli_on_smollm2(smollm2_dir, shared_data, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"source": p, "target": c}) + "\n" for p, c in multi30k_pairs(shared_data, 4)))
    out = tmp_path / "sel.safetensors"
    code = main(["calibrate", "--model", str(smollm2_dir), "--data", str(data), "--method", "gradient", "--steps", "1",
                 "--batch-size", "2", "--lora-rank", "1", "--out", str(out)])
    assert code == 0
    selection = NeuronSelection.load(out)
    assert selection.metadata["method"] == "gradient"
    assert selection.metadata["budget"]["spec"] == {"lora_rank": 1, "num_params": 30 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))}
    assert "layer" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no fields"}) + "\n")
    assert main(["calibrate", "--data", str(bad), "--steps", "1", "--percent", "1", "--out", str(out)]) == 1
    assert "'prompt' and 'completion'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--percent", "150"], "--percent must be in"),
    (["--percent", "1", "--max-length", "0"], "--max-length must be at least 1"),
    (["--percent", "1", "--max-examples", "0"], "--max-examples must be at least 1"),
    (["--percent", "1", "--lr", "0"], "--lr must be positive"),
    (["--percent", "1", "--steps", "0"], "--steps must be at least 1"),
    (["--num-neurons", "-3"], "--num-neurons must be at least 1"),
])
def test_calibrate_cli_refuses_bad_arguments_before_any_work(tmp_path, capsys, flags, message):
    missing = tmp_path / "not-there.jsonl"  # checked later: an argument error must come first
    assert main(["calibrate", "--data", str(missing), "--out", str(tmp_path / "s.safetensors"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_calibrate_cli_refuses_null_text(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"source": "a", "target": "b"}) + "\n" + json.dumps({"source": None, "target": "c"}) + "\n")
    assert main(["calibrate", "--data", str(data), "--percent", "1", "--out", str(tmp_path / "s.safetensors")]) == 1
    assert "row 2: 'source' and 'target' must be text, got None" in capsys.readouterr().err


def test_calibrate_cli_fine_tunes_and_selects(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"n{i}": i + 3 for i in range(125)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    model_dir = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"n{s} n{s + 1}", "completion": f"n{s + 2} n{s + 3}"}) + "\n"
                            for s in range(0, 60, 3)))
    out = tmp_path / "sel.safetensors"
    assert main(["calibrate", "--model", str(model_dir), "--data", str(data), "--steps", "3", "--lr", "1e-2",
                 "--batch-size", "4", "--num-neurons", "12", "--dtype", "float32", "--out", str(out)]) == 0
    selection = NeuronSelection.load(out)
    assert selection.num_neurons == 12 and selection.metadata["method"] == "cosine"
    assert "selection written to" in capsys.readouterr().out


def test_an_impossible_budget_fails_before_the_fine_tune():
    model, data = make_tiny_llama(), toy_data(8)
    losses = []
    with pytest.raises(ValueError):
        calibrate(model, data, steps=2, lr=1e-3, batch_size=8, progress=False, budget={"num_params": 10**12},
                  callback=lambda step, loss: losses.append(loss))
    assert losses == []  # no optimizer step ran
