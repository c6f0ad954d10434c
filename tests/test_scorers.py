"""The scorer registry: each scorer's formula against a direct computation on the tiny Llama, and what it costs."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama, make_tiny_tokenizer
from peft_neft.selection import (SCORERS, Budget, NeuronCalibrationCallback, activation_scores, calibrate, get_scorer,
                                 gradient_scores, select_neurons, taylor_scores)
from peft_neft.selection.cosine import cosine_rows
from peft_neft.tasks import make_collator

COLLATE = make_collator(make_tiny_tokenizer())  # pads with <pad> = 0, labels with -100
TARGETS = [f"model.layers.{i}.mlp.{m}" for i in (0, 1) for m in ("up_proj", "down_proj")]


def toy_data(n=8, seed=0, vocab=128):
    gen = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        length = 6 + i % 5  # different lengths: the batches hold padding
        ids = torch.randint(1, vocab, (length,), generator=gen).tolist()
        data.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * 3 + ids[3:]})
    return data


def weights(model):
    return {name: m.weight for name, m in model.named_modules() if name in TARGETS}


def test_registry_names_needs_and_a_clear_error():
    assert list(SCORERS) == ["cosine", "movement", "taylor", "gradient", "activation"]
    assert {name: s.needs for name, s in SCORERS.items()} == {
        "cosine": "optimizer", "movement": "optimizer", "taylor": "gradients", "gradient": "gradients",
        "activation": "forward"}
    assert all(s.name == name and s.help for name, s in SCORERS.items())
    assert get_scorer("taylor") is SCORERS["taylor"]
    with pytest.raises(ValueError, match="Unknown scorer 'fisher'; choose one of cosine, movement, taylor, gradient, "
                                         "activation"):
        get_scorer("fisher")


@pytest.mark.parametrize("name", list(SCORERS))
def test_every_scorer_runs_through_one_call_and_leaves_the_model_as_it_was(name):
    model = make_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = get_scorer(name).score(model, toy_data(), collate_fn=COLLATE, steps=2, batch_size=4, lr=1e-3, seed=0,
                                    target_modules=["up_proj", "down_proj"])
    assert scores.method == name and sorted(scores.scores) == sorted(TARGETS)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters()) and not model.training
    assert select_neurons(scores, num_neurons=10).num_neurons == 10


def test_cosine_and_movement_come_from_one_fine_tune():
    model = make_tiny_llama()
    original = {n: w.detach().clone() for n, w in weights(model).items()}
    tuned = {}
    record = lambda step, loss: tuned.update({n: w.detach().clone() for n, w in weights(model).items()})  # noqa: E731
    movement = calibrate(model, toy_data(), collate_fn=COLLATE, steps=2, lr=1e-3, batch_size=4, progress=False,
                         method="movement", callback=record)
    cosine = calibrate(make_tiny_llama(), toy_data(), collate_fn=COLLATE, steps=2, lr=1e-3, batch_size=4,
                       progress=False)
    assert movement.method == "movement" and cosine.method == "cosine"
    for name in TARGETS:
        assert torch.equal(movement.scores[name], -(tuned[name].double() - original[name].double()).norm(dim=1))
        assert torch.equal(cosine.scores[name], cosine_rows(original[name], tuned[name]))  # same run, same seed


def test_the_callback_selects_by_its_method():
    kwargs = dict(collate_fn=COLLATE, steps=2, lr=1e-3, batch_size=4, progress=False)
    selection = calibrate(make_tiny_llama(), toy_data(), method="movement", budget=Budget(num_neurons=5), **kwargs)
    scores = calibrate(make_tiny_llama(), toy_data(), method="movement", **kwargs)
    expected = select_neurons(scores, num_neurons=5)
    assert selection.metadata["method"] == "movement"
    assert {k: v.tolist() for k, v in selection.rows.items()} == {k: v.tolist() for k, v in expected.rows.items()}
    with pytest.raises(ValueError, match="method 'taylor' is not one of \\('cosine', 'movement'\\)"):
        NeuronCalibrationCallback(2, method="taylor")
    with pytest.raises(ValueError, match="Unknown spread"):
        NeuronCalibrationCallback(2, spread="layers")


def _one_batch_gradient(model, data):
    """The gradient of the loss on all of ``data`` as one batch (the order inside a batch does not change it)."""
    model.zero_grad()
    model(**COLLATE(data)).loss.backward()
    grads = {n: w.grad.detach().clone() for n, w in weights(model).items()}
    model.zero_grad()
    return grads


def test_taylor_is_the_absolute_row_sum_of_weight_times_gradient_per_batch_summed():
    model, data = make_tiny_llama(), toy_data()
    scores = taylor_scores(model, data, collate_fn=COLLATE, batches=2, batch_size=len(data))  # the same batch twice
    grads = _one_batch_gradient(model, data)
    for name, w in weights(model).items():
        expected = -2 * (w.detach().double() * grads[name].double()).sum(1).abs()
        torch.testing.assert_close(scores.scores[name], expected)
    assert scores.method == "taylor" and (torch.cat(list(scores.scores.values())) <= 0).all()


def test_gradient_is_minus_the_accumulated_row_gradient_norm():
    model, data = make_tiny_llama(), toy_data()
    scores = gradient_scores(model, data, collate_fn=COLLATE, batches=2, batch_size=len(data))
    grads = _one_batch_gradient(model, data)
    for name in TARGETS:
        torch.testing.assert_close(scores.scores[name], -(2 * grads[name].double().pow(2).sum(1)).sqrt())


@pytest.mark.parametrize("score", [gradient_scores, taylor_scores])
def test_gradient_probes_hold_one_weight_gradient_at_a_time(score):
    model = make_tiny_llama()
    held = []

    def count(weight):  # registered before the scorer's own hook, so it runs first, when this gradient exists
        held.append(sum(p.grad is not None for p in model.parameters()))

    handles = [w.register_post_accumulate_grad_hook(count) for w in weights(model).values()]
    score(model, toy_data(), collate_fn=COLLATE, batches=3, batch_size=4)
    for handle in handles:
        handle.remove()
    assert len(held) == 3 * len(TARGETS) and set(held) == {1}  # every target weight, three times, alone
    assert all(p.grad is None for p in model.parameters())


def test_activation_is_the_mean_absolute_unit_output_over_real_tokens():
    model, data = make_tiny_llama(), toy_data()
    scores = activation_scores(model, data, collate_fn=COLLATE, batches=2, batch_size=len(data))
    batch = COLLATE(data)
    outputs = {}
    handles = [m.register_forward_hook(lambda m, i, o, name=name: outputs.update({name: o.detach()}))
               for name, m in model.named_modules() if name in TARGETS]
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()
    real = batch["attention_mask"].bool()
    assert not real.all()  # padding is left out of the mean
    for name in TARGETS:
        torch.testing.assert_close(scores.scores[name], -outputs[name][real].abs().double().mean(0))
    assert scores.metadata["tokens"] == 2 * int(real.sum())
    assert all(p.grad is None for p in model.parameters())


def test_probes_refuse_zero_batches():
    for score in (gradient_scores, taylor_scores, activation_scores):
        with pytest.raises(ValueError, match="batches must be at least 1"):
            score(make_tiny_llama(), toy_data(), collate_fn=COLLATE, batches=0)
