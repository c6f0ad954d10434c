"""A comparison's report: the markdown table, the paired tests and the plot, next to ``results.json``."""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from .methods import parse_method
from .results import diverged
from .significance import paired_table, run_intervals, stored_metric_names

logger = logging.getLogger(__name__)

MARKERS = "osD^v<>p*h"
LABELS = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


def _mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _span(values: list[float], form: str) -> str:
    """One value as ``form`` gives it, or the lowest and highest where they print differently."""
    low, high = format(min(values), form), format(max(values), form)
    return low if low == high else f"{low}-{high}"


def _end(row: dict[str, Any]) -> str:
    """How a training or run ended: plateau, max_steps, or diverged with its step."""
    if diverged(row):
        return f"diverged at step {row.get('diverged_step')}"
    return row.get("stop_reason") or "-"  # folders from before ends were recorded lack them


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
    metrics = stored_metric_names(results)
    header = ["method", "trainable params", "% of model", *[m.upper() if m == "bleu" else m for m in metrics],
              "best val loss", "seeds", "lr", "steps (best)", "end", "train s/step", "memory MB", "adapter MB", "calib. steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in summarize(results, order):
        runs = group["runs"]
        scored = [r for r in runs if not diverged(r)]  # a diverged run is no result: marked, never averaged
        calib = runs[0].get("calibration")
        cells = [group["method"], _span([r["trainable_params"] for r in runs], ","),
                 _span([r["trainable_pct"] for r in runs], ".3f"),
                 *[_mean_std([r["scores"][m] for r in scored]) if scored else "diverged" for m in metrics],
                 _mean_std([r["best_val_loss"] for r in scored], digits=4) if scored else "-",
                 ",".join(str(r["seed"]) for r in runs), ",".join(sorted({f"{r['lr']:.3g}" for r in runs})),
                 ",".join(f"{r.get('steps_run', r.get('steps', 0))} ({r['best_step']})" for r in runs),
                 ",".join(_end(r) for r in runs),
                 f"{statistics.mean(r['time_per_step_s'] for r in runs):.3f}",
                 _span([r["memory_mb"] for r in runs], ".0f"), _span([r["adapter_bytes"] / 2**20 for r in runs], ".2f"),
                 str(calib["steps"]) if calib else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    signatures = {k: v for r in results["runs"].values() for k, v in r["signatures"].items()}
    mem_kinds = sorted({r["memory_kind"] for r in results["runs"].values()})
    notes = [f"Signature ({k}): `{v}`" for k, v in sorted(signatures.items())]
    if "device" in identity:
        notes.append(f"device {identity['device']}, dtype {identity['dtype']}; steps (best): optimizer steps run "
                     "(the step whose validation loss was lowest, whose weights were evaluated); end: plateau "
                     "(validation loss stopped improving), max_steps, or diverged (validation loss not finite: no "
                     "result, left out of the means); both per seed, in the seeds' order.")
    notes.append(f"memory MB: {', '.join(mem_kinds)}; adapter MB: the stored adapter (peft) or the trained tensors.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"




def _pyplot(path: str | os.PathLike) -> Any:
    """matplotlib's pyplot on the file backend, or None (logged) where the optional matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logger.debug("%s not drawn: matplotlib is not installed", path)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt: Any, fig: Any, path: str | os.PathLike) -> None:
    """Write a figure as PNG, atomically, and free it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot(results: dict[str, Any], out_dir: str | os.PathLike, path: str | os.PathLike,
         order: Sequence[str] = ()) -> None:
    """One point per method per metric with its 95% paired-bootstrap interval, a fixed colour per method family.

    With several seeds a point is the mean over seeds and its bar the mean of the seeds' half-widths.
    Without matplotlib (an optional dependency: the ``plot`` and ``demo`` extras) nothing is drawn.
    """
    plt = _pyplot(path)
    if plt is None:
        return
    metrics = tuple(m for m in stored_metric_names(results)
                    if all(m in run.get("intervals", {}) for run in results["runs"].values() if not diverged(run)))
    intervals = run_intervals(results)
    groups = summarize(results, order)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(metrics) + 0.5 * len(groups)), 4.2))
    width = 0.8 / max(len(groups), 1)
    seen: dict[str, int] = {}
    for g, group in enumerate(groups):
        method = parse_method(group["method"])  # its family's fixed colour, so it looks the same in every plot
        family = method.label
        marker = MARKERS[seen.setdefault(family, 0) % len(MARKERS)]
        seen[family] += 1
        keys = [f"{group['method']}@seed{r['seed']}" for r in group["runs"] if not diverged(r)]
        failed = len(group["runs"]) - len(keys)
        if not keys:  # no point to draw: the legend says why
            ax.plot([], [], "x", color=method.colour, label=f"{group['method']} (diverged)")
            continue
        xs, ys, errs = [], [], []
        for m, metric in enumerate(metrics):
            xs.append(m - 0.4 + width * (g + 0.5))
            ys.append(statistics.mean(intervals[k][metric]["score"] for k in keys))
            errs.append(statistics.mean(intervals[k][metric]["ci"] for k in keys))
        ax.errorbar(xs, ys, yerr=errs, fmt=marker, capsize=4, color=method.colour,
                    label=group["method"] + (f" ({len(keys)} seeds)" if len(keys) > 1 else "")
                    + (f" ({failed} diverged)" if failed else ""))
    ax.set_xticks(range(len(metrics)), [LABELS.get(m, m) for m in metrics])
    ax.set_xlim(-0.5, len(metrics) - 0.5)
    ax.set_ylabel("score (95% paired-bootstrap interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save_figure(plt, fig, path)


def bracketing(run: dict[str, Any]) -> str:
    """Whether a run's chosen rate has a worse neighbour on both sides in its search, and whether its training
    reached a plateau, each said with the fix if not."""
    rates = sorted(t["lr"] for t in run["lr_search"])
    if run["lr"] == rates[-1]:
        verdict = "not bracketed: the highest rate tried; add a larger factor to --lr-grid"
    elif run["lr"] == rates[0]:
        verdict = "not bracketed: the lowest rate tried; add a smaller factor to --lr-grid"
    else:
        verdict = "bracketed"
    if run.get("stop_reason") == "max_steps":
        verdict += ("; its training reached max_steps before a plateau, so it is not converged (a larger --steps or"
                    " --epochs would tell whether it had)")
    return verdict


def _searched_runs(results: dict[str, Any], order: Sequence[str]) -> list[dict[str, Any]]:
    """The runs that tried more than one learning rate, in the table's order."""
    return [r for g in summarize(results, order) for r in g["runs"] if len(r.get("lr_search", ())) > 1]


def lr_search_table(results: dict[str, Any], order: Sequence[str] = ()) -> str:
    """Markdown of each run's learning-rate search (runs that tried more than one rate), empty when there is none."""
    runs = _searched_runs(results, order)
    if not runs:
        return ""
    header = ["method", "seed", "lr", "best val loss", "steps (best)", "end"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    verdicts = []
    for run in runs:
        for t in sorted(run["lr_search"], key=lambda t: t["lr"]):
            bold = "**" if t["lr"] == run["lr"] else ""
            cells = [run["method"], str(run["seed"]), f"{bold}{t['lr']:.3g}{bold}",
                     f"{bold}{t['best_val_loss']:.4f}{bold}", f"{t.get('steps_run', '?')} ({t.get('best_step', '?')})",
                     _end(t)]  # folders from before steps were recorded lack them
            lines.append("| " + " | ".join(cells) + " |")
        verdicts.append(f"{run['method']} seed {run['seed']}: {run['lr']:.3g}, {bracketing(run)}")
    return ("\n## Learning-rate search\n\nEach run keeps the rate of lowest validation loss (bold); a chosen rate "
            "counts as found when a worse rate lies on both sides of it.\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(f"- {v}" for v in verdicts) + "\n")


def plot_lr_search(results: dict[str, Any], path: str | os.PathLike, order: Sequence[str] = ()) -> None:
    """Best validation loss against the learning rate, a line per run that tried several rates (log rate axis);
    nothing without such runs or without matplotlib."""
    runs = _searched_runs(results, order)
    plt = _pyplot(path) if runs else None
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for run in runs:
        search = sorted(run["lr_search"], key=lambda t: t["lr"])
        colour = parse_method(run["method"]).colour
        ax.plot([t["lr"] for t in search], [t["best_val_loss"] for t in search], "o-", color=colour,
                alpha=1.0 if run["seed"] == 0 else 0.5, label=f"{run['method']} seed {run['seed']}")
        ax.plot([run["lr"]], [run["best_val_loss"]], "*", color=colour, markersize=14)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best validation loss (star: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save_figure(plt, fig, path)


def write_report(results: dict[str, Any], out_dir: str | os.PathLike, order: Sequence[str] = ()) -> str:
    """Write ``results.md`` (table, learning-rate search, paired tests), ``results.png`` and, after a rate search,
    ``results-lr.png`` next to ``results.json``; return the text."""
    out = Path(out_dir)
    if not results["runs"]:
        return ""
    table = markdown_table(results, order) + lr_search_table(results, order) + paired_table(results)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table)
    plot(results, out, out / "results.png", order)
    plot_lr_search(results, out / "results-lr.png", order)
    return table
