"""Neuron-utilization analysis (paper section 6) on tiny Llamas where the answer is known."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_llama
from peft_neft import NeuronSelection
from peft_neft.analysis import (
    StreamingPearson,
    analyze_models,
    compare_utilization,
    neuron_pearson_scores,
    ranks_descending,
    write_report,
)
from peft_neft.analysis.utilization import resolve_threshold

UP0 = "model.layers.0.mlp.up_proj"


def token_inputs(count: int = 12, seed: int = 0, vocab: int = 128) -> list[list[int]]:
    """Token-id lists of different lengths, so padding is exercised."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (int(torch.randint(5, 16, (1,), generator=g)),), generator=g).tolist()
            for _ in range(count)]


def record(model, inputs, names):
    """Activations of the named modules, token by token, one input at a time (no padding at all)."""
    modules = dict(model.named_modules())
    store = {n: [] for n in names}
    hooks = [modules[n].register_forward_hook(
        lambda m, a, out, n=n: store[n].append((out[0] if isinstance(out, tuple) else out)[0].detach().double()))
        for n in names]
    with torch.no_grad():
        for ids in inputs:
            model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).numpy() for n, v in store.items()}


def max_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    corr = np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1]:]
    return np.nan_to_num(corr).max(axis=1)


def test_streaming_pearson_matches_numpy_over_uneven_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 6, generator=g) * 30 + 500
    y = torch.randn(1000, 4, generator=g) - 200
    y[:, 0] += 0.2 * x[:, 1]
    x[:, 5] = 7.0  # constant: correlation undefined, reported as 0
    stats = StreamingPearson(6, 4, fold_every=3)
    for start, stop in [(0, 1), (1, 90), (90, 500), (500, 501), (501, 1000)]:
        stats.update(x[start:stop], y[start:stop])
    corr = stats.correlation().numpy()
    expected = np.corrcoef(x[:, :5].double().numpy().T, y.double().numpy().T)[:5, 5:]
    np.testing.assert_allclose(corr[:5], expected, atol=1e-6)
    assert (corr[5] == 0).all()
    assert corr[1, 0] > 0.5


def test_scores_match_numpy_on_the_same_activations():
    a, b = make_tiny_llama(0), make_tiny_llama(1)
    inputs = token_inputs()
    scores = neuron_pearson_scores(a, b, inputs, batch_size=5, progress=False)
    assert scores.modules[0] == UP0 and scores.num_tokens == sum(map(len, inputs))
    for model, flat in ((a, scores.scores_a), (b, scores.scores_b)):
        acts = record(model, inputs, [UP0, "model.layers.0.mlp.down_proj", "model.layers.0"])
        np.testing.assert_allclose(flat[:64].numpy(), max_corr(acts[UP0], acts["model.layers.0"]), atol=2e-5)
        np.testing.assert_allclose(
            flat[64:96].numpy(), max_corr(acts["model.layers.0.mlp.down_proj"], acts["model.layers.0"]), atol=2e-5)

    cross = neuron_pearson_scores(a, b, inputs, batch_size=4, correlate_with="other_model", progress=False)
    acts_a, acts_b = record(a, inputs, [UP0]), record(b, inputs, [UP0])
    np.testing.assert_allclose(cross.scores_a[:64].numpy(), max_corr(acts_a[UP0], acts_b[UP0]), atol=2e-5)
    np.testing.assert_allclose(cross.scores_b[:64].numpy(), max_corr(acts_b[UP0], acts_a[UP0]), atol=2e-5)


@pytest.mark.parametrize("correlate_with", ["layer_output", "other_model"])
def test_identical_models_have_zero_rank_shift(correlate_with):
    a = make_tiny_llama(0)
    for b in (copy.deepcopy(a), a):  # a copy, and the very same object as both models
        report = analyze_models(a, b, token_inputs(), batch_size=5, correlate_with=correlate_with, progress=False)
        assert report.num_neurons == 2 * (64 + 32)
        assert (report.delta_rank == 0).all() and report.avg_abs_delta_rank == 0.0
        assert report.category_counts() == {"strongly_affected": 0, "suppressed": 0}
        assert all(bk["avg_abs_delta_rank"] in (None, 0.0) for bk in report.buckets())


def test_permuted_mlp_neurons_permute_the_scores():
    """Permuting the MLP's intermediate neurons keeps the function, so up_proj scores move with the rows."""
    a = make_tiny_llama(0)
    b = copy.deepcopy(a)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    mlp = b.model.layers[1].mlp
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[perm])
        mlp.up_proj.weight.copy_(mlp.up_proj.weight[perm])
        mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, perm])
    report = analyze_models(a, b, token_inputs(), progress=False)
    up1 = report.scores.offsets()["model.layers.1.mlp.up_proj"]
    part = slice(up1, up1 + 64)
    torch.testing.assert_close(report.scores.scores_b[part], report.scores.scores_a[part][perm], atol=1e-5, rtol=0)
    others = torch.ones(report.num_neurons, dtype=torch.bool)
    others[part] = False
    torch.testing.assert_close(report.scores.scores_b[others], report.scores.scores_a[others], atol=1e-5, rtol=0)
    cross = analyze_models(a, b, token_inputs(), correlate_with="other_model", progress=False)
    assert torch.allclose(cross.scores.scores_a[part], torch.ones(64, dtype=torch.float64), atol=1e-5)


def test_silenced_neurons_are_strongly_affected_and_suppressed():
    a = make_tiny_llama(0)
    inputs = token_inputs(16)
    base = analyze_models(a, copy.deepcopy(a), inputs, progress=False)
    top_rows = torch.argsort(base.rank_a[:64])[:4]  # the four best-ranked up_proj rows of layer 0
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.model.layers[0].mlp.up_proj.weight[top_rows] = 0.0  # constant output: score 0, rank drops to the bottom
    selection = NeuronSelection(rows={UP0: top_rows.sort().values})
    report = analyze_models(a, b, inputs, selection=selection, strong_threshold=0.5, progress=False)
    n = report.num_neurons
    assert report.strong_threshold == n // 2
    assert (report.scores.scores_b[top_rows] == 0).all()
    assert (report.delta_rank[top_rows] > n // 2).all()
    assert report.strongly_affected[top_rows].all() and report.suppressed[top_rows].all()
    assert not report.indirectly_affected[top_rows].any()
    assert torch.equal(report.indirectly_affected, report.strongly_affected & ~report.in_selection)
    counts = report.category_counts()
    moved = report.rank_b - report.rank_a  # counted here from the two rankings, not from the report's masks
    assert counts["strongly_affected"] == int((moved.abs() > n // 2).sum()) >= 4
    assert counts["suppressed"] == int((moved > n // 2).sum()) >= 4
    assert counts["indirectly_affected"] == counts["strongly_affected"] - 4  # the four silenced rows are selected
    per_layer = report.per_layer_counts()
    assert per_layer[0]["suppressed"] >= 4 and sum(v["neurons"] for v in per_layer.values()) == n


def test_ranks_buckets_and_threshold():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.3], dtype=torch.float64)
    assert ranks_descending(scores).tolist() == [5, 1, 3, 2, 4]
    assert resolve_threshold(0.2, 1000) == 200 and resolve_threshold(150, 1000) == 150
    with pytest.raises(ValueError, match="fraction"):
        resolve_threshold(1.5, 1000)
    with pytest.raises(TypeError):
        resolve_threshold("10", 1000)
    a, b = make_tiny_llama(0), make_tiny_llama(1)
    scores = neuron_pearson_scores(a, b, token_inputs(), progress=False)
    report = compare_utilization(scores, bucket_edges=(0, 10, 50, 100))
    buckets = report.buckets()
    assert [bk["neurons"] for bk in buckets] == [20, 76, 96]  # ceil(10% / 50% of 192) positions
    top = report.rank_a <= 20
    assert buckets[0]["avg_abs_delta_rank"] == pytest.approx(float(report.delta_rank[top].abs().double().mean()))
    with pytest.raises(ValueError, match="bucket_edges"):
        compare_utilization(scores, bucket_edges=(0, 50, 40, 100))


def test_bad_input_gives_clear_errors():
    a = make_tiny_llama(0)
    with pytest.raises(ValueError, match="differ in shape"):
        analyze_models(a, make_tiny_llama(0, hidden=48), token_inputs(), progress=False)
    with pytest.raises(ValueError, match="different layers"):
        analyze_models(a, make_tiny_llama(0, layers=3), token_inputs(), progress=False)
    with pytest.raises(ValueError, match="empty"):
        analyze_models(a, copy.deepcopy(a), [], progress=False)
    with pytest.raises(ValueError, match="another model"):
        analyze_models(a, copy.deepcopy(a), token_inputs(), progress=False,
                       selection=NeuronSelection(rows={"model.layers.7.mlp.up_proj": torch.tensor([1])}))
    with pytest.raises(ValueError, match="another model"):
        analyze_models(a, copy.deepcopy(a), token_inputs(), progress=False,
                       selection=NeuronSelection(rows={UP0: torch.tensor([3, 1535])}))
    with pytest.raises(ValueError, match="correlate_with"):
        analyze_models(a, copy.deepcopy(a), token_inputs(), correlate_with="hidden", progress=False)
    with pytest.raises(ValueError, match=r"Unknown target modules \['nope'\]"):
        analyze_models(a, copy.deepcopy(a), token_inputs(), target_modules=["nope"], progress=False)


def test_report_files(tmp_path):
    a = make_tiny_llama(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.model.layers[1].mlp.up_proj.weight.mul_(torch.linspace(-1, 1, 64)[:, None])
    selection = NeuronSelection(rows={"model.layers.1.mlp.up_proj": torch.arange(10)})
    report = analyze_models(a, b, token_inputs(), selection=selection, strong_threshold=20, progress=False)
    out = write_report(report, tmp_path / "report", "tiny", "tiny-scaled")
    summary = json.loads((out / "report.json").read_text())
    assert summary["num_neurons"] == 192 and summary["strong_threshold"] == 20
    assert summary["category_counts"] == report.category_counts()
    assert set(summary["category_counts"]) == {"strongly_affected", "suppressed", "indirectly_affected"}
    assert summary["per_layer"]["1"]["neurons"] == 96
    for png in ("buckets.png", "categories_per_layer.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Avg(|ΔRank|)" in (out / "report.md").read_text()
    from safetensors.torch import load_file

    assert torch.equal(load_file(out / "neurons.safetensors")["delta_rank"], report.delta_rank)
