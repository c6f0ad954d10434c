"""A comparison's report: the markdown table, the paired tests and the plot, next to ``results.json``."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from .significance import metric_names, paired_table, run_intervals

# Fixed colours per method family, so a method looks the same in every plot.
COLOURS = {"base": "#7f7f7f", "lora": "#1f77b4", "neft": "#ff7f0e", "neft-random": "#9467bd",
           "neft-reversed": "#8c564b", "full": "#2ca02c", "embed": "#bcbd22", "in-out": "#17becf"}
MARKERS = "osD^v<>p*h"
LABELS = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarize(results: dict[str, Any], order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One entry per method: its runs over seeds, with the per-seed values kept for mean ± std."""
    groups: dict[str, list[dict]] = {}
    for row in results["runs"].values():
        groups.setdefault(row["method"], []).append(row)
    names = [m for m in order if m in groups] + sorted(m for m in groups if m not in order)
    return [{"method": m, "runs": sorted(groups[m], key=lambda r: r["seed"])} for m in names]


def markdown_table(results: dict[str, Any], order: Sequence[str] = ()) -> str:
    """The comparison table: mean ± sample std over seeds where there is more than one."""
    identity = results["identity"]
    metrics = metric_names(identity["config"]["task"])
    header = ["method", "trainable params", "% of model", *[m.upper() if m == "bleu" else m for m in metrics],
              "seeds", "lr", "steps (best)", "end", "train s/step", "memory MB", "adapter MB", "calib. steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in summarize(results, order):
        runs = group["runs"]
        first = runs[0]
        calib = first.get("calibration")
        cells = [group["method"], f"{first['trainable_params']:,}", f"{first['trainable_pct']:.3f}",
                 *[_mean_std([r["scores"][m] for r in runs]) for m in metrics],
                 ",".join(str(r["seed"]) for r in runs), ",".join(sorted({f"{r['lr']:g}" for r in runs})),
                 ",".join(f"{r.get('steps_run', r.get('steps', 0))} ({r['best_step']})" for r in runs),
                 ",".join(sorted({r.get("stop_reason") or "-" for r in runs})),
                 f"{statistics.mean(r['time_per_step_s'] for r in runs):.3f}",
                 f"{first['memory_mb']:.0f}", f"{first['adapter_bytes'] / 2**20:.2f}",
                 str(calib["steps"]) if calib else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    signatures = {k: v for r in results["runs"].values() for k, v in r["signatures"].items()}
    mem_kinds = sorted({r["memory_kind"] for r in results["runs"].values()})
    notes = [f"Signature ({k}): `{v}`" for k, v in sorted(signatures.items())]
    if "device" in identity:
        notes.append(f"device {identity['device']}, dtype {identity['dtype']}; steps (best): optimizer steps run "
                     "(the step whose validation loss was lowest, whose weights were evaluated); end: plateau "
                     "(validation loss stopped improving) or max_steps.")
    notes.append(f"memory MB: {', '.join(mem_kinds)}; adapter MB: the stored adapter (peft) or the trained tensors.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _family(run: dict[str, Any]) -> str:
    if run["kind"] == "neft" and run.get("strategy") not in (None, "lowest"):
        return f"neft-{run['strategy']}"
    return run["kind"]


def plot(results: dict[str, Any], out_dir: str | os.PathLike, path: str | os.PathLike,
         order: Sequence[str] = ()) -> None:
    """One point per method per metric with its 95% paired-bootstrap interval, a fixed colour per method family.

    With several seeds a point is the mean over seeds and its bar the mean of the seeds' half-widths.
    Without matplotlib (an optional dependency: the ``plot`` and ``demo`` extras) nothing is drawn.
    """
    try:
        import matplotlib
    except ImportError:
        import logging

        logging.getLogger(__name__).debug("%s not drawn: matplotlib is not installed", path)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metric_names(results["identity"]["config"]["task"])
    intervals = run_intervals(results)
    groups = summarize(results, order)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(metrics) + 0.5 * len(groups)), 4.2))
    width = 0.8 / max(len(groups), 1)
    seen: dict[str, int] = {}
    for g, group in enumerate(groups):
        family = _family(group["runs"][0])
        marker = MARKERS[seen.setdefault(family, 0) % len(MARKERS)]
        seen[family] += 1
        keys = [f"{group['method']}@seed{r['seed']}" for r in group["runs"]]
        xs, ys, errs = [], [], []
        for m, metric in enumerate(metrics):
            xs.append(m - 0.4 + width * (g + 0.5))
            ys.append(statistics.mean(intervals[k][metric]["score"] for k in keys))
            errs.append(statistics.mean(intervals[k][metric]["ci"] for k in keys))
        ax.errorbar(xs, ys, yerr=errs, fmt=marker, capsize=4, color=COLOURS.get(family, "black"),
                    label=group["method"] + (f" ({len(keys)} seeds)" if len(keys) > 1 else ""))
    ax.set_xticks(range(len(metrics)), [LABELS.get(m, m) for m in metrics])
    ax.set_xlim(-0.5, len(metrics) - 0.5)
    ax.set_ylabel("score (95% paired-bootstrap interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str | os.PathLike, order: Sequence[str] = ()) -> str:
    """Write ``results.md`` (table and paired tests) and ``results.png`` next to ``results.json``; return the text."""
    out = Path(out_dir)
    if not results["runs"]:
        return ""
    table = markdown_table(results, order) + paired_table(results)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table)
    plot(results, out, out / "results.png", order)
    return table
