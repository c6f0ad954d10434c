"""Print the cross-task tables of docs/results.md from the grid folders' results.json and outputs.

    python docs/results/summarize_grid.py docs/results/grid-*
    python docs/results/summarize_grid.py docs/results/tuned-*

Per task and metric: mean ± sample std over the seeds present (n in brackets), the learning rate each
run chose, and the paired bootstrap tests that `peft-neft compare` also writes into each folder's results.md.
The tests read each folder's per-sentence outputs, ``outputs/*.jsonl.gz`` (gzipped JSON lines: source,
reference, hypothesis), through ``peft_neft.compare.paired_tests``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from peft_neft.compare import paired_tests, summarize
from peft_neft.compare.significance import store_figures

COLUMNS = ["base", "full", "lora:8", "neft:match-lora:8", "lora:64", "neft:match-lora:64",
           "neft-random:match-lora:8", "neft-reversed:match-lora:8"]
METRICS = {"translation": ("bleu", "chrf"), "summarization": ("rouge1", "rouge2", "rougeL")}


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def main(folders: list[str]) -> None:
    loaded = [(Path(f).name, json.loads((Path(f) / "results.json").read_text()), f) for f in folders]
    present = {run["method"] for _, results, _ in loaded for run in results["runs"].values()}
    columns = [m for m in COLUMNS if m in present]
    print("| task | metric | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name, results, _ in loaded:
        groups = {g["method"]: g["runs"] for g in summarize(results)}
        task = results["identity"]["config"]["task"]
        for metric in (*METRICS[task], "best_val_loss"):
            values = {m: [r["scores"][metric] if metric in r["scores"] else r[metric] for r in groups.get(m, [])]
                      for m in columns}
            print(f"| {name} | {metric} | " + " | ".join(cell(values[m]) for m in columns) + " |")
        chosen = [",".join(f"{r['lr']:g}" for r in groups[m]) if m in groups and m != "base" else "-" for m in columns]
        print(f"| {name} | lr (per seed) | " + " | ".join(chosen) + " |")
    print("\n| task | system | baseline | seed | " + " | ".join(f"Δ {m} (p)" for m in ("bleu", "chrf", "rougeL")) + " |")
    print("|---|---|---|---|---|---|---|")
    for name, results, folder in loaded:
        store_figures(results, folder)  # older folders stored no tests; today's paired test, computed here
        for row in sorted(paired_tests(results), key=lambda r: (r["system"], r["seed"])):
            cells = [f"{row['tests'][m]['delta']:+.2f} ({row['tests'][m]['p_value']:.3f})" if m in row["tests"] else "-"
                     for m in ("bleu", "chrf", "rougeL")]
            print(f"| {name} | {row['system']} | {row['baseline']} | {row['seed']} | " + " | ".join(cells) + " |")
    searched = [(name, run) for name, results, _ in loaded for run in results["runs"].values()
                if run["seed"] == 0 and len(run["lr_search"]) > 1]
    if searched:  # validation loss at every rate tried, seed 0; the chosen rate in bold
        rates = sorted({c["lr"] for _, run in searched for c in run["lr_search"]})
        print("\n| task | method | " + " | ".join(f"lr {r:.3g}" for r in rates) + " |")
        print("|---|---|" + "---|" * len(rates))
        for name, run in searched:
            losses = {round(c["lr"], 12): c["best_val_loss"] for c in run["lr_search"]}
            cells = [("**{:.3f}**" if math.isclose(r, run["lr"]) else "{:.3f}").format(losses[round(r, 12)])
                     if round(r, 12) in losses else "-" for r in rates]
            print(f"| {name} | {run['method']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
