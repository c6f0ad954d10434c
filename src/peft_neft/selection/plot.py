"""A picture of a selection: share of rows selected per layer and module kind, and neurons per layer."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping

import torch

from .._targets import layer_index
from ..atomic import atomic_path


def plot_selection(
    rows: Mapping[str, torch.Tensor], out_features: Mapping[str, int], title: str, path: str | os.PathLike
) -> None:
    """Write a PNG: a heatmap (module kind x layer) of the percentage of rows selected, and stacked bars of
    selected neurons per layer. ``out_features`` (module -> rows it has) may be empty: the heatmap then
    shows counts. Needs matplotlib (``pip install peft-neft[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("Plotting a selection needs matplotlib: pip install 'peft-neft[plot]'.") from err
    import numpy as np

    names = sorted(set(rows) | set(out_features))
    layers = sorted({layer_index(n) for n in names if layer_index(n) is not None})
    kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
    if not layers:
        layers = [None]
    counts = np.zeros((len(kinds), len(layers)))
    share = np.full((len(kinds), len(layers)), np.nan)
    for name in names:
        k, col = kinds.index(name.rsplit(".", 1)[-1]), layers.index(layer_index(name)) if layer_index(name) in layers else 0
        count = int(rows[name].numel()) if name in rows else 0
        counts[k, col] += count
        if name in out_features:
            share[k, col] = 100.0 * count / out_features[name]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(layers) + 2), 2.2 + 0.5 * len(kinds) + 3),
                                      gridspec_kw={"height_ratios": [max(1, len(kinds)), 3]}, constrained_layout=True)
    labels = ["-" if layer is None else str(layer) for layer in layers]
    if np.isnan(share).all():
        share = counts
        bar_label = "selected neurons"
    else:
        bar_label = "% of rows selected"
    image = top.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    top.set_yticks(range(len(kinds)), kinds)
    top.set_xticks(range(len(layers)), labels, fontsize=7)
    top.set_xlabel("layer")
    fig.colorbar(image, ax=top, label=bar_label)
    bottom_stack = np.zeros(len(layers))
    for k, kind in enumerate(kinds):
        bottom.bar(range(len(layers)), counts[k], bottom=bottom_stack, label=kind)
        bottom_stack += counts[k]
    bottom.set_xticks(range(len(layers)), labels, fontsize=7)
    bottom.set_xlabel("layer")
    bottom.set_ylabel("selected neurons")
    bottom.legend(fontsize=8)
    width = max(40, int(fig.get_figwidth() * 14))
    fig.suptitle(textwrap.fill(title, width), fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
