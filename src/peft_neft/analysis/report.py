"""Writing a utilization report: JSON summary, per-neuron tensors, PNG plots and a short markdown page."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from ..atomic import atomic_dir
from .utilization import UtilizationReport

_CATEGORY_COLORS = {"strongly_affected": "#1f77b4", "suppressed": "#d62728", "indirectly_affected": "#2ca02c"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("Report plots need matplotlib: pip install 'peft-neft[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_buckets(report: UtilizationReport, path: Path, title: str) -> None:
    """Bar chart of Avg(|ΔRank|) per top-percentile bucket of model A's Pearson ranking (paper Figure 3)."""
    plt = _pyplot()
    buckets = report.buckets()
    labels = [f"{b['from_percent']:g}-{b['to_percent']:g}%" for b in buckets]
    values = [b["avg_abs_delta_rank"] or 0.0 for b in buckets]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(labels, values, color="#4c72b0")
    for bar, bucket in zip(bars, buckets):
        ax.annotate(f"n={bucket['neurons']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("bucket: top percentile of model A's Pearson score")
    ax.set_ylabel("Avg(|ΔRank|)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_categories(report: UtilizationReport, path: Path, title: str) -> None:
    """Grouped bars: neurons per category in each decoder layer (paper Figure 6, split by layer)."""
    plt = _pyplot()
    per_layer = report.per_layer_counts()
    layers = list(per_layer)
    names = list(report.categories())
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4))
    for i, name in enumerate(names):
        xs = [x + (i - (len(names) - 1) / 2) * width for x in range(len(layers))]
        ax.bar(xs, [per_layer[l][name] for l in layers], width, label=name.replace("_", " "),
               color=_CATEGORY_COLORS[name])
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([str(l) for l in layers], fontsize=7)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("neurons")
    ax.set_title(f"{title}\n|ΔRank| > {report.strong_threshold} of {report.num_neurons} neurons")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(report: UtilizationReport, summary: dict, label_a: str, label_b: str) -> str:
    counts = summary["category_counts"]
    lines = [
        f"# Neuron utilization: {label_b} vs {label_a}",
        "",
        f"- neurons analysed: {report.num_neurons} (rows of {len(report.scores.modules)} modules), "
        f"tokens: {report.scores.num_tokens}, Pearson against: `{report.scores.correlate_with}`",
        f"- mean highest Pearson: A {summary['mean_score_a']:.4f}, B {summary['mean_score_b']:.4f}",
        f"- Avg(|ΔRank|): {summary['avg_abs_delta_rank']:.1f} "
        f"({100 * summary['avg_abs_delta_rank_fraction']:.2f}% of the neuron count)",
        f"- strongly affected (|ΔRank| > {report.strong_threshold}): {counts['strongly_affected']}, "
        f"of which suppressed (rank dropped): {counts['suppressed']}"
        + (f", indirectly affected (not trained): {counts['indirectly_affected']}" if "indirectly_affected" in counts else ""),
        "",
        "| bucket (top % of A's Pearson rank) | neurons | Avg(\\|ΔRank\\|) |",
        "| --- | ---: | ---: |",
    ]
    for b in summary["buckets"]:
        mean = "-" if b["avg_abs_delta_rank"] is None else f"{b['avg_abs_delta_rank']:.1f}"
        lines.append(f"| {b['from_percent']:g}-{b['to_percent']:g} | {b['neurons']} | {mean} |")
    names = list(counts)
    lines += ["", "| layer | neurons | " + " | ".join(n.replace("_", " ") for n in names) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for layer, row in summary["per_layer"].items():
        lines.append(f"| {layer} | {row['neurons']} | " + " | ".join(str(row[n]) for n in names) + " |")
    lines += ["", "![buckets](buckets.png)", "", "![categories per layer](categories_per_layer.png)", ""]
    return "\n".join(lines)


def write_report(
    report: UtilizationReport,
    out_dir: str | os.PathLike,
    label_a: str = "model A",
    label_b: str = "model B",
    extra: Optional[dict] = None,
) -> Path:
    """Write ``report.json``, ``neurons.safetensors``, ``buckets.png``, ``categories_per_layer.png`` and
    ``report.md`` into ``out_dir`` (replaced as a whole, atomically). Returns the folder."""
    summary = report.summary()
    summary.update({"model_a": label_a, "model_b": label_b, **(extra or {})})
    tensors = {
        "score_a": report.scores.scores_a.float(),
        "score_b": report.scores.scores_b.float(),
        "rank_a": report.rank_a,
        "rank_b": report.rank_b,
        "delta_rank": report.delta_rank,
    }
    for name, mask in report.categories().items():
        tensors[name] = mask.to(torch.uint8)
    layout = {"modules": json.dumps(report.scores.modules), "sizes": json.dumps(report.scores.sizes)}
    title = f"{label_b} vs {label_a}"
    with atomic_dir(out_dir) as tmp:
        (tmp / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "neurons.safetensors"), metadata=layout)
        plot_buckets(report, tmp / "buckets.png", title)
        plot_categories(report, tmp / "categories_per_layer.png", title)
        (tmp / "report.md").write_text(_markdown(report, summary, label_a, label_b))
    return Path(out_dir)
