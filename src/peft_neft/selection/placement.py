"""Where selections sit: selected rows per layer and module side by side, the norm percentiles of the selected
rows per module kind, and the overlaps between selections (``peft-neft inspect``).

It answers at a glance what a score prefers, e.g. "the weakest rows of the top ten layers".
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping

import torch
from torch import nn

from .._shapes import weight_rows
from .._targets import layer_index
from ..atomic import atomic_path
from .neuron_selection import NeuronSelection, overlap


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def norm_percentiles(selection: NeuronSelection, model: nn.Module) -> dict[str, dict[str, float]]:
    """Per module kind: how many rows are selected and the quartiles of their norm percentiles.

    A row's norm percentile is the share of its module's rows with a smaller L2 norm, in percent (0: the module's
    weakest row, 100: its strongest); a selection blind to norms sits at a median near 50.
    """
    selection.check_model(model)
    modules = dict(model.named_modules())
    by_kind: dict[str, list[torch.Tensor]] = defaultdict(list)
    for name, rows in selection.rows.items():
        norms = weight_rows(modules[name]).detach().double().norm(dim=1)
        rank = torch.argsort(torch.argsort(norms, stable=True)).double()
        by_kind[_kind(name)].append(100.0 * rank[rows] / max(1, norms.numel() - 1))
    result = {}
    for kind, parts in sorted(by_kind.items()):
        values = torch.cat(parts)
        q25, q50, q75 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        result[kind] = {"rows": int(values.numel()), "p25": q25, "median": q50, "p75": q75}
    return result


def rows_per_band(selection: NeuronSelection, bands: int = 3) -> dict[str, list[int]]:
    """Selected rows per module kind in ``bands`` equal bands of layers (bottom first), plus ``"all"``."""
    layers = [layer_index(n) for n in selection.metadata.get("out_features", selection.rows)]
    layers = [i for i in layers if i is not None] or [0]
    count = max(layers) + 1
    table: dict[str, list[int]] = defaultdict(lambda: [0] * bands)
    for name, rows in selection.rows.items():
        band = min(bands - 1, (layer_index(name) or 0) * bands // count)
        for key in (_kind(name), "all"):
            table[key][band] += int(rows.numel())
    return dict(sorted(table.items(), key=lambda kv: (kv[0] == "all", kv[0])))


def plot_selections(selections: Mapping[str, NeuronSelection], path: str | os.PathLike) -> None:
    """Write a PNG: one heatmap per selection (module kind x layer, % of rows selected), on one colour scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("Plotting selections needs matplotlib: pip install 'peft-neft[plot]'.") from err
    import numpy as np

    grids = {}
    for label, selection in selections.items():
        out_features = selection.metadata.get("out_features")
        if not out_features:
            raise ValueError(f"Selection {label!r} does not record its modules' sizes (out_features), so its share "
                             "of rows cannot be drawn; make it with select_neurons, `peft-neft select` or calibrate.")
        layers = sorted({layer_index(n) or 0 for n in out_features})
        kinds = sorted({_kind(n) for n in out_features})
        share = np.zeros((len(kinds), len(layers)))
        for name, total in out_features.items():
            picked = int(selection.rows[name].numel()) if name in selection.rows else 0
            share[kinds.index(_kind(name)), layers.index(layer_index(name) or 0)] = 100.0 * picked / total
        grids[label] = (share, kinds, layers)
    top = max(float(g[0].max()) for g in grids.values()) or 1.0
    fig, axes = plt.subplots(len(grids), 1, figsize=(10, 1.2 + 1.1 * sum(len(g[1]) for g in grids.values()) / 2 + 0.6
                                                     * len(grids)), squeeze=False, constrained_layout=True)
    for ax, (label, (share, kinds, layers)) in zip(axes[:, 0], grids.items()):
        image = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
        ax.set_yticks(range(len(kinds)), kinds)
        ax.set_xticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
        ax.set_title(f"{label}: {selections[label].num_neurons} rows", fontsize=9)
    axes[-1, 0].set_xlabel("layer")
    fig.colorbar(image, ax=axes[:, 0], label="% of rows selected")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def placement_report(selections: Mapping[str, NeuronSelection], model: nn.Module | None = None) -> str:
    """A markdown report: rows per band of layers and module kind, norm percentiles (given the model), overlaps."""
    if not selections:
        raise ValueError("placement_report needs at least one selection.")
    lines = ["# Where the selections sit", ""]
    for label, selection in selections.items():
        bands = rows_per_band(selection)
        lines += [f"## {label}", "", f"{selection.budget_report()}", "",
                  "| module kind | bottom third | middle third | top third |", "| --- | --- | --- | --- |"]
        lines += [f"| {kind} | " + " | ".join(str(c) for c in counts) + " |" for kind, counts in bands.items()]
        if model is not None:
            lines += ["", "Norm percentile of the selected rows within their module (0: weakest row, 100: strongest):",
                      "", "| module kind | rows | 25th | median | 75th |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {kind} | {q['rows']} | {q['p25']:.1f} | {q['median']:.1f} | {q['p75']:.1f} |"
                      for kind, q in norm_percentiles(selection, model).items()]
        lines.append("")
    if len(selections) > 1:
        labels = list(selections)
        lines += ["## Overlap", "", "Shared rows over the smaller selection (the paper's Table 5 measure):", "",
                  "| | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
        lines += [f"| {a} | " + " | ".join(f"{overlap(selections[a], selections[b]):.3f}" for b in labels) + " |"
                  for a in labels]
        lines.append("")
    return "\n".join(lines)
