"""Paired tests between runs of a comparison, and bootstrap intervals of each run, from stored outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..tasks.significance import DEFAULT_SAMPLES
from ..tasks.task import get_task
from .methods import paired_baselines
from .results import diverged, outputs_path, read_outputs, run_key


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics a task is scored with, in table order."""
    return get_task(task).metric_names


def stored_metric_names(results: dict[str, Any]) -> tuple[str, ...]:
    """The task's metrics that every stored run of ``results`` was scored with, in table order: a folder made before
    a metric joined its task (chrF joined summarization on 2026-12-06) still renders, without that metric."""
    names = metric_names(results["identity"]["config"]["task"])
    runs = [run for run in results.get("runs", {}).values() if not diverged(run)]
    return tuple(m for m in names if all(m in run.get("scores", {}) for run in runs))


def store_figures(results: dict[str, Any], out_dir: str | os.PathLike) -> bool:
    """Add to ``results`` what the report shows and is not stored yet; return whether anything was added.

    Each run's bootstrap intervals (``run["intervals"]``) and each NeFT run's paired tests against its
    baseline runs of the same seed (:func:`~peft_neft.compare.methods.paired_baselines`), stored as
    ``results["paired"]["<run key> vs <baseline run key>"]``, from the stored outputs (a folder written before
    runs had several baselines keys its one pair by the run key; such a pair is kept, not computed again). Called
    as each run finishes, so the figures of a finished run are computed once and the report only reads them. A
    diverged run has no outputs, so neither.
    """
    config, out = results["identity"]["config"], Path(out_dir)
    task, added = get_task(config["task"]), False
    for run in results["runs"].values():
        if "intervals" not in run and not diverged(run):
            outputs = read_outputs(outputs_path(out, run_key(run["method"], run["seed"])))
            run["intervals"] = task.intervals(outputs["hypothesis"], outputs["reference"], char_level=config["char_level"])
            added = True
    paired = results.setdefault("paired", {})
    done = {(pair["system"], pair["baseline"], pair["seed"]) for pair in paired.values()}
    for key, run in results["runs"].items():
        for baseline in paired_baselines(run["method"]):
            other = run_key(baseline, run["seed"])
            if ((run["method"], baseline, run["seed"]) in done or other not in results["runs"] or diverged(run)
                    or diverged(results["runs"][other])):
                continue
            ours, theirs = (read_outputs(outputs_path(out, k)) for k in (key, other))
            tests = task.paired_test(ours["hypothesis"], theirs["hypothesis"], ours["reference"],
                                     char_level=config["char_level"])
            paired[f"{key} vs {other}"] = {"system": run["method"], "baseline": baseline, "seed": run["seed"],
                                           "tests": tests}
            added = True
    return added


def paired_tests(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored paired tests (:func:`store_figures`): each NeFT run against its baseline runs of the same seed."""
    return list(results.get("paired", {}).values())


def run_intervals(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per run key: each metric's score and 95% bootstrap half-width, as stored by :func:`store_figures`."""
    return {key: run["intervals"] for key, run in results["runs"].items() if not diverged(run)}


def paired_table(results: dict[str, Any]) -> str:
    """Markdown for :func:`paired_tests`, empty when no run has its baseline yet."""
    rows = paired_tests(results)
    if not rows:
        return ""
    metrics = tuple(m for m in stored_metric_names(results) if all(m in row["tests"] for row in rows))
    header = ["system", "baseline", "seed", *[f"Δ {m} (p)" for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: (r["system"], r["seed"], r["baseline"])):
        cells = [f"{row['tests'][m]['delta']:+.2f} ({row['tests'][m]['p_value']:.3f})" for m in metrics]
        lines.append("| " + " | ".join([row["system"], row["baseline"], str(row["seed"]), *cells]) + " |")
    return ("\n## Paired tests\n\nEach NeFT run against its baseline runs of the same seed (the LoRA whose count it "
            "matches; any other selection than the paper's also against the paper's and random rows), on the same test "
            f"sentences: paired bootstrap resampling ({DEFAULT_SAMPLES} resamples, two-sided; identical outputs give p = 1). "
            "p is the chance of a difference this large from resampling the test set alone; it says nothing "
            "about the spread between training seeds.\n\n" + "\n".join(lines) + "\n")
