"""Neuron selection: cosine scores, budgets, strategies, set operations, save/load, CLI, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import make_tiny_llama, make_tiny_tokenizer
from peft_neft import NeFTConfig
from peft_neft.cli import main
from peft_neft.selection import (
    Budget,
    NeuronScores,
    NeuronSelection,
    budget_from_lora,
    overlap,
    score_checkpoints,
    score_models,
    select_hybrid,
    select_neurons,
)
from peft_neft.selection.cosine import cosine_rows

UP0, UP1 = "model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"
DOWN0, DOWN1 = "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"
PERTURBED = {UP1: [3, 9, 40], DOWN0: [5], DOWN1: [0, 31]}


def perturbed_copy(model, rows=PERTURBED):
    tuned = copy.deepcopy(model)
    modules = dict(tuned.named_modules())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, idx in rows.items():
            w = modules[name].weight
            w[idx] += torch.randn(len(idx), w.shape[1], generator=gen) * w[idx].norm(dim=1, keepdim=True)
        # every other row moves a tiny bit, so "unchanged" is not what identifies the perturbed rows
        for name in (UP0, UP1, DOWN0, DOWN1):
            w = modules[name].weight
            w.mul_(1 + 1e-4 * torch.rand(w.shape[0], 1, generator=gen))
    return tuned


def hand(rows: dict, fingerprint="f", in_features=None) -> NeuronSelection:
    return NeuronSelection(
        rows={k: torch.tensor(v, dtype=torch.int64) for k, v in rows.items()},
        metadata={"fingerprint": fingerprint, "in_features": in_features or {k: 10 for k in rows}},
    )


def test_select_finds_exactly_the_perturbed_rows(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama))
    assert set(scores.scores) == {UP0, UP1, DOWN0, DOWN1}
    assert scores.in_features == {UP0: 32, UP1: 32, DOWN0: 64, DOWN1: 64}
    assert scores.total_params == sum(p.numel() for p in tiny_llama.parameters())
    selection = select_neurons(scores, num_neurons=6)
    assert {k: v.tolist() for k, v in selection.rows.items()} == PERTURBED
    # the same rows under a parameter budget equal to their cost
    cost = 3 * 32 + 3 * 64
    by_params = select_neurons(scores, num_params=cost)
    assert {k: v.tolist() for k, v in by_params.rows.items()} == PERTURBED
    assert by_params.metadata["achieved_params"] == cost == by_params.num_params
    assert selection.rows[UP1].dtype == torch.int64


def test_scores_are_the_cosine_of_each_row(tiny_llama):
    tuned = perturbed_copy(tiny_llama)
    scores = score_models(tiny_llama, tuned)
    a, b = tiny_llama.model.layers[1].mlp.up_proj.weight, tuned.model.layers[1].mlp.up_proj.weight
    expected = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    torch.testing.assert_close(scores.scores[UP1], expected)
    assert scores.scores[UP1].dtype == torch.float64


def test_conv1d_is_scored_per_output_column():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=32)).eval()
    tuned = copy.deepcopy(gpt2)
    with torch.no_grad():
        tuned.transformer.h[1].mlp.c_fc.weight[:, [7, 50]] *= -1  # Conv1D weight is (in, out)
    scores = score_models(gpt2, tuned, target_modules=["c_fc"])
    assert scores.scores["transformer.h.1.mlp.c_fc"].shape == (64,)
    assert scores.in_features["transformer.h.1.mlp.c_fc"] == 16
    selection = select_neurons(scores, num_neurons=2)
    assert {k: v.tolist() for k, v in selection.rows.items()} == {"transformer.h.1.mlp.c_fc": [7, 50]}
    get_peft_model(gpt2, NeFTConfig.from_selection(selection))


def test_no_nan_for_zero_or_unchanged_rows():
    a = torch.randn(5, 4)
    b = a.clone()
    a[0] = 0
    b[0] = 0  # zero and unchanged
    b[1] = 0  # became zero
    a[2] = 0  # was zero
    b[3] *= 2.0  # rescaled only
    cos = cosine_rows(a, b)
    assert not torch.isnan(cos).any()
    assert cos.tolist()[:3] == [1.0, 0.0, 0.0]
    assert cos[3] == pytest.approx(1.0, abs=1e-12) and cos[4] == 1.0


def test_percent_budget_is_hit_within_one_row(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama))
    total = scores.total_params
    for percent in (0.5, 1.0, 3.0, 6.0, 9.0, 12.0):
        selection = select_neurons(scores, percent=percent)
        budget = percent / 100 * total
        achieved = selection.metadata["achieved_params"]
        assert achieved == sum(scores.in_features[n] * r.numel() for n, r in selection.rows.items())
        assert abs(achieved - budget) <= 64 / 2  # the closest prefix is within half of the largest row
        assert selection.metadata["budget"] == {"unit": "params", "value": budget, "spec": {"percent": percent}}
        assert f"{achieved} trainable parameters" in selection.summary()


def test_exact_budget_when_rows_cost_the_same(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama), target_modules=["up_proj"])
    assert select_neurons(scores, num_params=32 * 17).num_neurons == 17
    percent = 100 * 32 * 20 / scores.total_params
    assert select_neurons(scores, percent=percent).metadata["achieved_params"] == 32 * 20
    assert select_neurons(scores, num_neurons=128).num_neurons == 128  # every row


@pytest.mark.parametrize("targets", [None, ["up_proj", "down_proj"], ["q_proj", "v_proj"]])
def test_budget_from_lora_equals_peft_lora_parameter_count(targets):
    model = make_tiny_llama()
    r = 4
    budget = budget_from_lora(model, r, targets)
    lora = get_peft_model(make_tiny_llama(), LoraConfig(r=r, target_modules=targets or "all-linear"))
    assert budget == lora.get_nb_trainable_parameters()[0]


def test_streamed_scores_equal_in_memory_scores(tiny_llama, tmp_path):
    tuned = perturbed_copy(tiny_llama)
    tiny_llama.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    memory = score_models(tiny_llama, tuned)
    streamed = score_checkpoints(tmp_path / "base", tmp_path / "tuned")
    assert streamed.scores.keys() == memory.scores.keys()
    for name in memory.scores:
        assert torch.equal(streamed.scores[name], memory.scores[name])
    assert streamed.in_features == memory.in_features
    assert streamed.total_params == memory.total_params
    assert streamed.fingerprint == memory.fingerprint
    tuned.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    sharded = score_checkpoints(tmp_path / "base", tmp_path / "sharded")
    assert all(torch.equal(sharded.scores[n], memory.scores[n]) for n in memory.scores)


def test_streamed_conv1d_checkpoints_are_scored_per_column(tmp_path):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    tuned = copy.deepcopy(gpt2)
    with torch.no_grad():
        tuned.transformer.h[0].mlp.c_proj.weight[:, 3] += 1.0
    gpt2.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    streamed = score_checkpoints(tmp_path / "base", tmp_path / "tuned", target_modules=["c_fc", "c_proj"])
    memory = score_models(gpt2, tuned, target_modules=["c_fc", "c_proj"])
    assert all(torch.equal(streamed.scores[n], memory.scores[n]) for n in memory.scores)
    assert select_neurons(streamed, num_neurons=1).rows == {"transformer.h.0.mlp.c_proj": torch.tensor([3])}


def test_strategies_reversed_and_random(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama))
    flat = torch.cat([scores.scores[n] for n in scores.scores])
    reversed_sel = select_neurons(scores, num_neurons=10, strategy="reversed")
    chosen = torch.cat([scores.scores[n][r] for n, r in reversed_sel.rows.items()])
    assert chosen.min() >= torch.sort(flat, descending=True).values[9]
    a = select_neurons(scores, percent=5, strategy="random", seed=1)
    b = select_neurons(scores, percent=5, strategy="random", seed=1)
    c = select_neurons(scores, percent=5, strategy="random", seed=2)
    assert {k: v.tolist() for k, v in a.rows.items()} == {k: v.tolist() for k, v in b.rows.items()}
    assert overlap(a, c) < 1.0
    assert a.metadata["seed"] == 1 and a.metadata["strategy"] == "random"


def test_per_layer_spread_shares_the_budget():
    gen = torch.Generator().manual_seed(0)
    scores = NeuronScores(  # layer 1 changed more than layer 0 everywhere
        {UP0: 0.9 + 0.1 * torch.rand(64, generator=gen), UP1: 0.5 + 0.1 * torch.rand(64, generator=gen)},
        {UP0: 32, UP1: 32}, total_params=10_000, method="cosine",
    )
    assert select_neurons(scores, num_neurons=20).rows.keys() == {UP1}
    quota = select_neurons(scores, num_neurons=20, spread="per-layer")
    assert quota.rows[UP0].numel() == quota.rows[UP1].numel() == 10
    assert torch.equal(quota.rows[UP0], torch.sort(torch.argsort(scores.scores[UP0])[:10]).values)
    odd = select_neurons(scores, num_neurons=21, spread="per-layer")  # the remainder goes by global rank
    assert odd.rows[UP1].numel() == 11 and odd.num_neurons == 21
    assert quota.metadata["spread"] == "per-layer"


def test_per_module_spread_shares_the_budget_by_module_size():
    gen = torch.Generator().manual_seed(0)
    down0, up0 = UP0.replace("up_proj", "down_proj"), UP0
    # one layer, two modules: up (64 rows of 32) costs 2048, down (32 rows of 64) costs 2048; up changed most
    scores = NeuronScores(
        {up0: 0.5 + 0.1 * torch.rand(64, generator=gen), down0: 0.9 + 0.1 * torch.rand(32, generator=gen)},
        {up0: 32, down0: 64}, total_params=100_000, method="cosine",
    )
    assert select_neurons(scores, num_params=1024).rows.keys() == {up0}
    assert select_neurons(scores, num_params=1024, spread="per-layer").rows.keys() == {up0}  # one layer: global
    spread = select_neurons(scores, num_params=1024, spread="per-module")
    assert spread.rows[up0].numel() == 16 and spread.rows[down0].numel() == 8  # 512 parameters each
    assert torch.equal(spread.rows[down0], torch.sort(torch.argsort(scores.scores[down0])[:8]).values)
    rows = select_neurons(scores, num_neurons=48, spread="per-module")  # rows: shares of 64 and 32 rows
    assert rows.rows[up0].numel() == 32 and rows.rows[down0].numel() == 16
    assert spread.metadata["achieved_params"] == 1024 and spread.metadata["spread"] == "per-module"
    with pytest.raises(ValueError, match="Unknown spread 'layer'.*per-module"):
        select_neurons(scores, num_neurons=4, spread="layer")


def test_hybrid_is_lowest_plus_disjoint_reversed(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama))
    lowest = select_neurons(scores, percent=3)
    hybrid = select_hybrid(scores, percent=3, reversed_percent=6)
    assert lowest.intersection(hybrid).num_neurons == lowest.num_neurons
    extra = hybrid.num_params - lowest.num_params
    assert abs(extra - 0.06 * scores.total_params) <= 64
    assert hybrid.metadata["strategy"] == "hybrid"


def test_union_intersection_overlap_by_hand():
    a = hand({"m.0.up": [1, 2, 3], "m.1.up": [4]})
    b = hand({"m.0.up": [2, 3, 5], "m.1.down": [0]})
    union = a.union(b)
    assert {k: v.tolist() for k, v in union.rows.items()} == {"m.0.up": [1, 2, 3, 5], "m.1.down": [0], "m.1.up": [4]}
    inter = a.intersection(b)
    assert {k: v.tolist() for k, v in inter.rows.items()} == {"m.0.up": [2, 3]}
    assert overlap(a, b) == pytest.approx(2 / 4)
    assert overlap(a, a) == 1.0
    assert overlap(inter, a) == 1.0  # contained in the other
    assert union.num_params == 60 and union.metadata["method"] == "union"


def test_union_of_different_base_models_is_refused():
    with pytest.raises(ValueError, match="different base models"):
        hand({"m.0.up": [1]}, fingerprint="aaa").union(hand({"m.0.up": [2]}, fingerprint="bbb"))


def test_save_load_round_trip_and_peft_accepts_it(tiny_llama, tmp_path):
    selection = select_neurons(score_models(tiny_llama, perturbed_copy(tiny_llama)), percent=4)
    selection.save(tmp_path / "sel.safetensors")
    loaded = NeuronSelection.load(tmp_path / "sel.safetensors")
    assert loaded.rows.keys() == selection.rows.keys()
    assert all(torch.equal(loaded.rows[k], selection.rows[k]) for k in selection.rows)
    assert all(torch.equal(loaded.scores[k], selection.scores[k]) for k in selection.scores)
    assert loaded.metadata == selection.metadata
    loaded.check_model(tiny_llama)
    model = get_peft_model(tiny_llama, NeFTConfig.from_selection(NeuronSelection.load(tmp_path / "sel.safetensors")))
    assert model.get_nb_trainable_parameters()[0] == selection.num_params


def test_summary_and_plot(tiny_llama, tmp_path):
    selection = select_neurons(score_models(tiny_llama, perturbed_copy(tiny_llama)), num_neurons=6)
    rows = selection.summary_rows()
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[1]["up_proj"] == "3/64" and rows[1]["down_proj"] == "2/32" and rows[0]["neurons"] == 1
    selection.plot(tmp_path / "sel.png")
    assert (tmp_path / "sel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama))
    other = make_tiny_llama(intermediate=48)
    with pytest.raises(ValueError, match="not the same base model"):
        score_models(tiny_llama, other)
    with pytest.raises(ValueError, match="another base model"):
        select_neurons(scores, percent=3, model=other)
    with pytest.raises(ValueError, match="another base model"):
        select_neurons(scores, percent=3).check_model(other)
    for percent in (0, -1, 100.5):
        with pytest.raises(ValueError, match=r"\(0, 100\]"):
            select_neurons(scores, percent=percent)
    with pytest.raises(ValueError, match="smaller than one row"):
        select_neurons(scores, num_params=10)
    with pytest.raises(ValueError, match="exactly one budget"):
        select_neurons(scores, percent=3, num_neurons=4)
    with pytest.raises(ValueError, match="exactly one budget"):
        select_neurons(scores)
    with pytest.raises(ValueError, match="not both"):
        select_neurons(scores, percent=3, budget=Budget(percent=3))
    with pytest.raises(ValueError, match="lora_rank records where num_params came from"):
        Budget(percent=3, lora_rank=8)
    with pytest.raises(ValueError, match="exceeds everything"):
        select_neurons(scores, percent=100)
    with pytest.raises(ValueError, match="Unknown strategy"):
        select_neurons(scores, percent=3, strategy="highest")
    with pytest.raises(ValueError, match=r"Unknown target modules \['upproj'\].*up_proj"):
        score_models(tiny_llama, tiny_llama, target_modules=["upproj", "down_proj"])
    with pytest.raises(ValueError, match="positive int"):
        budget_from_lora(tiny_llama, 0)
    with pytest.raises(ValueError, match="NaN"):
        NeuronScores({UP0: torch.tensor([0.1, float("nan")])}, {UP0: 32}, 100, "cosine")


def test_select_cli_from_two_checkpoints(tiny_llama, tmp_path, capsys):
    tuned = perturbed_copy(tiny_llama)
    tiny_llama.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    out = tmp_path / "sel.safetensors"
    code = main(["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "tuned"),
                 "--num-neurons", "6", "--out", str(out), "--plot", str(tmp_path / "sel.png")])
    assert code == 0
    assert {k: v.tolist() for k, v in NeuronSelection.load(out).rows.items()} == PERTURBED
    printed = capsys.readouterr().out
    assert "6 neurons in 3 modules" in printed and "budget 6 neurons, achieved +0" in printed
    lora = main(["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "tuned"),
                 "--lora-rank", "2", "--out", str(out)])
    assert lora == 0
    selection = NeuronSelection.load(out)
    assert abs(selection.num_params - budget_from_lora(tiny_llama, 2)) <= 64
    assert main(["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "tuned"),
                 "--percent", "150", "--out", str(out)]) == 2
    assert "(0, 100]" in capsys.readouterr().err


def test_selection_file_for_another_model_is_refused_unless_overridden(tiny_llama, tmp_path):
    selection = select_neurons(score_models(tiny_llama, perturbed_copy(tiny_llama)), num_neurons=6)
    selection.save(tmp_path / "sel.safetensors")
    wider = make_tiny_llama(hidden=48)  # every selected row exists, but the model is not the one scored
    with pytest.raises(ValueError, match=r"other weight shapes.*ignore_fingerprint=True"):
        get_peft_model(wider, NeFTConfig.from_selection(NeuronSelection.load(tmp_path / "sel.safetensors")))
    with pytest.raises(ValueError, match=r"other weight shapes"):
        get_peft_model(make_tiny_llama(hidden=48), NeFTConfig.from_selection(selection))
    loaded = NeuronSelection.load(tmp_path / "sel.safetensors")
    model = get_peft_model(make_tiny_llama(hidden=48), NeFTConfig.from_selection(loaded, ignore_fingerprint=True))
    assert model.get_nb_trainable_parameters()[0] == 6 * 48 - 3 * 48 + 3 * 64  # 3 up_proj rows of 48, 3 down of 64
    same = get_peft_model(make_tiny_llama(seed=5), NeFTConfig.from_selection(loaded, modules_to_save=["lm_head"]))
    assert same.peft_config["default"].selection_fingerprint == selection.fingerprint
    same.add_adapter("second", NeFTConfig.from_selection(selection))  # peft's wrappers do not change the fingerprint


def test_check_model_refuses_another_fingerprint_even_with_every_row_in_range(tiny_llama):
    selection = select_neurons(score_models(tiny_llama, perturbed_copy(tiny_llama)), num_neurons=6)
    selection.check_model(tiny_llama)
    other = make_tiny_llama(vocab=256)  # the same Linear layers (every selected row exists), another embedding
    assert all(other.get_submodule(n).out_features == tiny_llama.get_submodule(n).out_features for n in selection.rows)
    with pytest.raises(ValueError, match=r"The selection comes from another base model.*Select neurons on the model"):
        selection.check_model(other)


def _write_selection(path, tensors, metadata):
    import safetensors.torch

    safetensors.torch.save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"rows/m": torch.tensor([1, 2])}, {"format": "peft-neft-selection/1", "metadata": "{not json"},
         r"metadata is not valid JSON"),
        ({"rows/m": torch.tensor([1, 2])}, {"format": "peft-neft-selection/1", "metadata": "[1, 2]"},
         r"metadata must be a JSON object, got a list"),
        ({"rows/m": torch.tensor([1.0, 2.5])}, {"format": "peft-neft-selection/1"}, r"rows of module 'm'.*integers"),
        ({"rows/m": torch.tensor([3, 1])}, {"format": "peft-neft-selection/1"}, r"rows of module 'm'.*sorted"),
        ({"rows/m": torch.tensor([-1, 1])}, {"format": "peft-neft-selection/1"}, r"rows of module 'm'.*negative"),
        ({"rows/m": torch.tensor([[1, 2]])}, {"format": "peft-neft-selection/1"}, r"rows of module 'm'.*1-D"),
        ({"rows/m": torch.tensor([1, 2]), "scores/m": torch.tensor([[0.5]])}, {"format": "peft-neft-selection/1"},
         r"scores of module 'm'.*1-D"),
        ({"rows/m": torch.tensor([1, 2])}, {"format": "peft-neft-selection/1", "metadata": '{"fingerprint": 5}'},
         r"fingerprint.*string"),
        ({"rows/m": torch.tensor([1]), "rows/base_model.model.m": torch.tensor([2])},
         {"format": "peft-neft-selection/1"}, r"names module 'm' twice .*Keep one entry"),
    ],
)
def test_corrupt_selection_files_get_clear_errors(tmp_path, tensors, metadata, message):
    _write_selection(tmp_path / "sel.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=r"sel\.safetensors.*" + message):
        NeuronSelection.load(tmp_path / "sel.safetensors")


def test_a_json_file_is_not_read_as_a_selection(tmp_path):
    (tmp_path / "sel.json").write_text('{"model.layers.0.mlp.up_proj": [1, 2]}')
    with pytest.raises(ValueError, match=r"sel\.json' is not a safetensors file.*NeuronSelection\.save.*peft-neft select"):
        NeuronSelection.load(tmp_path / "sel.json")


@pytest.mark.parametrize("strategy", ["lowest", "reversed", "random"])
def test_scores_of_an_unchanged_model_are_refused(tiny_llama, strategy):
    scores = score_models(tiny_llama, copy.deepcopy(tiny_llama))
    with pytest.raises(ValueError, match=r"No neuron changed.*every cosine score is 1\.0"):
        select_neurons(scores, num_neurons=4, strategy=strategy)


def test_calibration_at_learning_rate_zero_is_refused(tiny_llama):
    from peft_neft.selection import calibrate
    from peft_neft.tasks import make_collator

    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "attention_mask": [1] * 8, "labels": ids}
            for ids in torch.randint(1, 128, (4, 8), generator=gen).tolist()]
    scores = calibrate(tiny_llama, data, collate_fn=make_collator(make_tiny_tokenizer()), steps=2, lr=0.0, batch_size=2,
                       progress=False)
    with pytest.raises(ValueError, match="No neuron changed"):
        select_neurons(scores, percent=3)


def test_select_cli_on_two_identical_checkpoints_is_an_error(tiny_llama, tmp_path, capsys):
    tiny_llama.save_pretrained(tmp_path / "base")
    tiny_llama.save_pretrained(tmp_path / "same")
    out = tmp_path / "sel.safetensors"
    capsys.readouterr()
    code = main(["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "same"),
                 "--num-neurons", "6", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    problems = [line for line in err.splitlines() if not line.startswith("[peft_neft.")]  # the rest: the log
    assert len(problems) == 1 and problems[0].startswith("peft-neft select: error: No neuron changed")


def test_exclude_removes_rows_of_its_own_module_only():
    scores = NeuronScores({UP0: torch.tensor([0.99, 0.5, 0.2, 0.1]), UP1: torch.tensor([0.98, 0.97, 0.3, 0.4])},
                          {UP0: 32, UP1: 32}, total_params=10_000, method="cosine")
    exclude = hand({UP0: [0]})
    picked = select_neurons(scores, num_neurons=2, strategy="reversed", exclude=exclude)
    assert {k: v.tolist() for k, v in picked.rows.items()} == {UP1: [0, 1]}  # UP1's row 0 is not excluded
    lowest = select_neurons(scores, num_neurons=3, exclude=hand({UP1: [2]}))
    assert {k: v.tolist() for k, v in lowest.rows.items()} == {UP0: [2, 3], UP1: [3]}


def test_hybrid_adds_exactly_the_top_scored_rows_outside_the_lowest_part(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama))
    lowest = select_neurons(scores, percent=3)
    hybrid = select_hybrid(scores, percent=3, reversed_percent=6)
    taken = {(n, int(r)) for n, rows in lowest.rows.items() for r in rows}
    ranked = sorted(((float(s), n, r) for n, col in scores.scores.items() for r, s in enumerate(col)
                     if (n, r) not in taken), key=lambda t: -t[0])
    extra = {(n, r) for n, rows in hybrid.rows.items() for r in rows.tolist()} - taken
    count = len(extra)
    assert count > 0 and extra == {(n, r) for _, n, r in ranked[:count]}


def test_select_cli_strategy_and_spread(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path / "base")
    perturbed_copy(tiny_llama).save_pretrained(tmp_path / "tuned")
    scores = score_checkpoints(tmp_path / "base", tmp_path / "tuned")
    common = ["select", "--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "tuned"), "--num-neurons", "6"]

    def run(name, *extra):
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0
        return NeuronSelection.load(tmp_path / name)

    def as_lists(selection):
        return {k: v.tolist() for k, v in selection.rows.items()}

    cases = {
        "reversed.safetensors": (["--strategy", "reversed"], dict(strategy="reversed")),
        "random.safetensors": (["--strategy", "random", "--seed", "3"], dict(strategy="random", seed=3)),
        "quota.safetensors": (["--spread", "per-layer"], dict(spread="per-layer")),
        "modules.safetensors": (["--spread", "per-module"], dict(spread="per-module")),
    }
    results = {}
    for name, (flags, kwargs) in cases.items():
        results[name] = run(name, *flags)
        assert as_lists(results[name]) == as_lists(select_neurons(scores, num_neurons=6, **kwargs)), name
    assert results["reversed.safetensors"].metadata["strategy"] == "reversed"
    assert results["random.safetensors"].metadata["seed"] == 3
    assert results["quota.safetensors"].metadata["spread"] == "per-layer"
    # each flag changes the result: the global lowest selection is PERTURBED (five rows in layer 1, one in layer 0)
    assert all(as_lists(s) != PERTURBED for s in results.values())
    quota = results["quota.safetensors"].summary_rows()
    assert [r["neurons"] for r in quota] == [3, 3]


def test_a_budget_is_made_once_and_selects_as_its_keywords_do(tiny_llama):
    scores = score_models(tiny_llama, perturbed_copy(tiny_llama))
    lora = Budget.from_lora(tiny_llama, 2)
    assert lora.num_params == budget_from_lora(tiny_llama, 2) and lora.spec == {"num_params": lora.num_params,
                                                                                 "lora_rank": 2}
    for budget, keywords in ((Budget(percent=3), {"percent": 3}), (lora, {"num_params": lora.num_params}),
                             (Budget(num_neurons=5), {"num_neurons": 5})):
        made, spelled = select_neurons(scores, budget=budget), select_neurons(scores, **keywords)
        assert {n: r.tolist() for n, r in made.rows.items()} == {n: r.tolist() for n, r in spelled.rows.items()}
        assert made.metadata["budget"]["spec"] == budget.spec
    lora.check_fits(tiny_llama, ["up_proj", "down_proj"])
    with pytest.raises(ValueError, match="exceeds everything the target modules offer"):
        Budget(percent=50).check_fits(tiny_llama, ["up_proj"])
    with pytest.raises(ValueError, match="smaller than one row"):
        Budget(num_params=10).check_fits(tiny_llama, ["up_proj"])


def test_every_scorer_returns_neuron_scores_whose_selections_carry_the_fingerprint(tiny_llama):
    from peft_neft.tuner.fingerprint import model_fingerprint
    from peft_neft.analysis import probe_scores
    from peft_neft.selection import calibrate, gradient_scores
    from peft_neft.tasks import make_collator

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (8, 8), generator=gen).tolist()
    data = [{"input_ids": row, "attention_mask": [1] * 8, "labels": row} for row in ids]
    collate = make_collator(make_tiny_tokenizer())
    every = {
        "cosine": score_models(tiny_llama, perturbed_copy(tiny_llama)),
        "calibrate": calibrate(tiny_llama, data, collate_fn=collate, steps=1, lr=1e-2, batch_size=4, progress=False),
        "gradient": gradient_scores(tiny_llama, data, collate_fn=collate, batches=1, batch_size=4),
        "probe": probe_scores(tiny_llama, ids, [i % 2 for i in range(8)], progress=False),
    }
    for name, scores in every.items():
        assert isinstance(scores, NeuronScores), name
        assert scores.fingerprint == model_fingerprint(tiny_llama), name
        selection = select_neurons(scores, num_neurons=6)
        assert selection.metadata["fingerprint"] == model_fingerprint(tiny_llama), name
        chosen = {n: torch.isin(torch.arange(s.numel()), selection.rows.get(n, torch.empty(0, dtype=torch.long)))
                  for n, s in scores.scores.items()}
        picked = torch.cat([s[chosen[n]] for n, s in scores.scores.items()])
        left = torch.cat([s[~chosen[n]] for n, s in scores.scores.items()])
        assert float(picked.max()) <= float(left.min()), name  # lower is selected first, for every scorer
