"""Probe-based neuron selection (paper section 3.1)."""

from __future__ import annotations

import gzip

import pytest
import torch

from conftest import make_tiny_llama
from peft_neft import NeFTConfig, NeuronScores, select_neurons
from peft_neft.tuner.fingerprint import model_fingerprint
from peft_neft.analysis import fit_ridge_classifier, probe_scores

UP0 = "model.layers.0.mlp.up_proj"
PLANTED = [5, 17, 40]


def test_ridge_matches_the_normal_equations_and_separates():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 8, generator=g, dtype=torch.float64) + 6.0 * torch.nn.functional.one_hot(labels, 8)
    weights, bias = fit_ridge_classifier(features, labels, alpha=0.5)
    targets = 2.0 * torch.nn.functional.one_hot(labels, 3).double() - 1.0
    xc, yc = features - features.mean(0), targets - targets.mean(0)
    expected = torch.linalg.solve(xc.T @ xc + 0.5 * torch.eye(8, dtype=torch.float64), xc.T @ yc)
    torch.testing.assert_close(weights.double(), expected, atol=1e-5, rtol=1e-5)
    assert ((features.float() @ weights + bias).argmax(1) == labels).all()
    wide = torch.randn(10, 40, generator=g)  # fewer examples than features: the dual system is used
    w_dual, _ = fit_ridge_classifier(wide, torch.arange(10) % 2, alpha=2.0)
    xc = wide.double() - wide.double().mean(0)
    yc = 2.0 * torch.nn.functional.one_hot(torch.arange(10) % 2, 2).double() - 1.0
    yc = yc - yc.mean(0)
    primal = torch.linalg.solve(xc.T @ xc + 2.0 * torch.eye(40, dtype=torch.float64), xc.T @ yc)
    torch.testing.assert_close(w_dual.double(), primal, atol=1e-5, rtol=1e-4)


def planted_model():
    """A one-layer Llama whose up_proj input carries the class along a known direction u.

    Attention writes nothing (o_proj = 0), so up_proj reads RMSNorm(embedding). Class-0 tokens have
    embeddings noise + 3u, class-1 tokens noise - 3u. Rows PLANTED of up_proj are u; all others are
    orthogonal to u.
    """
    model = make_tiny_llama(seed=0, hidden=64, intermediate=128, layers=1, vocab=64)
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    layer = model.model.layers[0]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        noise = torch.randn(64, 64, generator=g)
        noise -= torch.outer(noise @ u, u)
        sign = torch.where(torch.arange(64) < 32, 3.0, -3.0)
        model.model.embed_tokens.weight.copy_(noise + sign[:, None] * u)
        rows = torch.randn(128, 64, generator=g)
        rows -= torch.outer(rows @ u, u)
        rows[PLANTED] = u
        layer.mlp.up_proj.weight.copy_(rows)
    return model


def synthetic_task(count: int = 80):
    g = torch.Generator().manual_seed(2)
    labels = [i % 2 for i in range(count)]
    data = [(torch.randint(0, 32, (12,), generator=g) + 32 * y).tolist() for y in labels]
    return data, labels


def test_probe_picks_the_neurons_aligned_with_the_separating_direction():
    model = planted_model()
    data, labels = synthetic_task()
    scores = probe_scores(model, data, labels, target_modules=[UP0], progress=False)
    assert isinstance(scores, NeuronScores) and scores.method == "probe"
    selection = select_neurons(scores, num_neurons=3)
    assert selection.rows[UP0].tolist() == PLANTED
    up = scores.scores[UP0]  # minus the alignment: lower = selected first, as for every scorer
    assert up[PLANTED].max() < -0.9 and torch.topk(up, 4, largest=False).values[-1] > -0.5
    assert scores.metadata["probe_train_accuracy"][UP0] == 1.0
    assert scores.metadata["classes"] == ["0", "1"] and selection.num_neurons == 3
    assert selection.metadata["fingerprint"] == model_fingerprint(model)  # so check_model refuses another model
    selection.check_model(model)
    with pytest.raises(ValueError, match="another base model|fingerprint"):
        selection.check_model(make_tiny_llama(hidden=64, intermediate=96, layers=1, vocab=64))


def test_parameter_budget_and_use_with_neft():
    model = planted_model()
    data, labels = synthetic_task(40)
    up = probe_scores(model, data, labels, target_modules=["up_proj"], progress=False)
    by_params = select_neurons(up, num_params=3 * 64 + 31)  # the prefix closest to the budget, as for any scorer
    assert list(by_params.rows) == [UP0] and by_params.rows[UP0].tolist() == PLANTED
    assert by_params.num_params == 3 * 64 and by_params.metadata["method"] == "probe"
    both = select_neurons(probe_scores(model, data, labels, progress=False), num_neurons=10)
    assert both.num_neurons == 10 and set(both.scores) == {UP0, "model.layers.0.mlp.down_proj"}
    config = NeFTConfig.from_selection(both)
    assert config.num_rows == 10


def test_probe_bad_input():
    model = make_tiny_llama()
    data, labels = synthetic_task(10)
    with pytest.raises(ValueError, match="empty"):
        probe_scores(model, [], [])
    with pytest.raises(ValueError, match="one label per example"):
        probe_scores(model, data, labels[:-1])
    with pytest.raises(ValueError, match="two distinct labels"):
        probe_scores(model, data, [0] * 10)
    scores = probe_scores(model, data, labels, progress=False)
    with pytest.raises(ValueError, match="exceeds everything"):
        select_neurons(scores, num_neurons=10_000)
    with pytest.raises(ValueError, match="exactly one budget"):
        select_neurons(scores)
    with pytest.raises(ValueError, match="tokenizer"):
        probe_scores(model, ["a text"] * 10, labels)


@pytest.mark.slow
def test_probe_on_smollm2_with_xnli(smollm2_dir, shared_data):
    from peft_neft.embedded_model import load_model_and_tokenizer

    with gzip.open(shared_data / "xnli" / "dev-en.tsv.gz", "rt", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for _, line in zip(range(48), handle)]
    texts = [f"Premise: {p}\nHypothesis: {h}" for p, h, _ in rows]
    model, tokenizer = load_model_and_tokenizer(smollm2_dir)
    layers = r"model\.layers\.(0|15|29)\.mlp\.(up|down)_proj"
    scores = probe_scores(model, texts, [label for *_, label in rows], tokenizer=tokenizer, target_modules=layers,
                          batch_size=16, progress=False)
    selection = select_neurons(scores, num_neurons=200, model=model)
    assert selection.num_neurons == 200 and len(selection.scores) == 6
    assert scores.metadata["classes"] == ["contradiction", "entailment", "neutral"]
    modules = dict(model.named_modules())
    for name, rows_ in selection.rows.items():
        assert int(rows_.max()) < modules[name].out_features
    chosen = torch.cat([selection.scores[n][r] for n, r in selection.rows.items()])
    others = torch.cat([s[~torch.isin(torch.arange(s.numel()), selection.rows.get(n, torch.empty(0, dtype=torch.long)))]
                        for n, s in selection.scores.items()])
    assert float(chosen.max()) <= float(others.min())  # the 200 best-aligned (lowest-scored) neurons over all modules
    everything = torch.cat(list(selection.scores.values()))
    assert float(everything.std()) > 0 and float(everything.min()) >= -1.0 and float(everything.max()) <= 0.0
