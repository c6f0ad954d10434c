"""Where selections sit: norm percentiles, rows per band of layers, overlaps, and ``peft-neft inspect``."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from peft_neft.cli import main
from peft_neft.selection import NeuronScores, NeuronSelection, select_neurons
from peft_neft.selection.placement import (norm_percentiles, placement_report, plot_selections,
                                           rows_per_band)

UP0, DOWN1 = "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"


def _norm_selection(model, name, count, weakest=True):
    """The ``count`` weakest (or strongest) rows of one module, as a selection on ``model``."""
    weight = dict(model.named_modules())[name].weight.detach()
    scores = {n: torch.zeros(m.weight.shape[0], dtype=torch.float64) for n, m in model.named_modules()
              if n.endswith(("up_proj", "down_proj"))}
    scores[name] = weight.double().norm(dim=1) * (1 if weakest else -1) - 1e3  # ranked first, by norm
    in_features = {n: dict(model.named_modules())[n].weight.shape[1] for n in scores}
    from peft_neft.tuner.fingerprint import model_fingerprint

    return select_neurons(NeuronScores(scores, in_features, total_params=model.num_parameters(), method="norm",
                                       metadata={"fingerprint": model_fingerprint(model)}), num_neurons=count)


def test_norm_percentiles_place_the_weakest_rows_at_the_bottom():
    model = make_tiny_llama()
    weakest = norm_percentiles(_norm_selection(model, UP0, 5), model)
    rows = 64  # up_proj has 64 rows: the five weakest have norm percentiles 0, 1/63, ..., 4/63
    expected = torch.quantile(torch.arange(5, dtype=torch.float64) * 100 / (rows - 1),
                              torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    assert weakest == {"up_proj": {"rows": 5, "p25": expected[0], "median": expected[1], "p75": expected[2]}}
    strongest = norm_percentiles(_norm_selection(model, UP0, 5, weakest=False), model)
    assert strongest["up_proj"]["median"] == 100 - expected[1]


def test_rows_per_band_counts_each_kind_by_layer_band():
    model = make_tiny_llama()
    selection = _norm_selection(model, DOWN1, 3).union(_norm_selection(model, UP0, 2))
    assert rows_per_band(selection, bands=2) == {"down_proj": [0, 3], "up_proj": [2, 0], "all": [2, 3]}


def test_inspect_writes_a_report_and_a_picture(tmp_path, capsys):
    model = make_tiny_llama()
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    _norm_selection(model, UP0, 5).save(tmp_path / "weak.safetensors")
    _norm_selection(model, DOWN1, 5, weakest=False).save(tmp_path / "strong.safetensors")
    out, plot = tmp_path / "report.md", tmp_path / "report.png"
    assert main(["inspect", f"paper={tmp_path / 'weak.safetensors'}", str(tmp_path / "strong.safetensors"),
                 "--model", str(model_dir), "--out", str(out), "--plot", str(plot)]) == 0
    text = out.read_text()
    assert "## paper" in text and "## strong" in text and "## Overlap" in text
    assert "| up_proj | 5 | 1.6 | 3.2 | 4.8 |" in text  # percentiles 0..6.3 of the five weakest of 64 rows
    assert "| paper | 1.000 | 0.000 |" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    selections = {"a": NeuronSelection.load(tmp_path / "weak.safetensors")}
    assert placement_report(selections).count("Norm percentile") == 0  # no model, no norms
    with pytest.raises(ValueError, match="does not record its modules' sizes"):
        plot_selections({"by hand": NeuronSelection(rows={UP0: torch.tensor([1])})}, tmp_path / "hand.png")
    assert main(["inspect", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert "No selection file at" in capsys.readouterr().err
