"""Side-by-side comparison of fine-tuning methods on one task: NeFT vs LoRA vs full and partial FT.

``results.json`` holds every finished (method, seed) run, ``results.md`` the table, rate searches and paired
tests, ``results.png`` a point per method per metric with paired-bootstrap intervals (``results-lr.png``: validation
loss against the rate), ``outputs/`` the
per-sentence outputs. Modules: :mod:`.methods` (names, the kinds of method, trainable models), :mod:`.config`,
:mod:`.scoring` (cached calibrations),
:mod:`.run` (the grid), :mod:`.evaluate` (generation, size, memory), :mod:`.results` (folder I/O),
:mod:`.report` (table, plot), :mod:`.significance` (paired tests, intervals) and :mod:`.workers` (the
start of a worker process). The public names load on first use, so a worker process starts cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .config import CompareConfig
    from .methods import (DEFAULT_LR, KINDS, Method, paired_baselines, parse_method, parse_methods, prepare_model,
                          select_for)
    from .report import markdown_table, plot, summarize, write_report
    from .results import RESULTS_FORMAT, RunResult, read_outputs, run_key
    from .run import compare
    from .significance import paired_table, paired_tests, run_intervals

_HOME = {
    "CompareConfig": "config", "compare": "run",
    **dict.fromkeys(["DEFAULT_LR", "KINDS", "Method", "paired_baselines", "parse_method", "parse_methods", "prepare_model",
                     "select_for"], "methods"),
    **dict.fromkeys(["markdown_table", "plot", "summarize", "write_report"], "report"),
    **dict.fromkeys(["RESULTS_FORMAT", "RunResult", "read_outputs", "run_key"], "results"),
    **dict.fromkeys(["paired_table", "paired_tests", "run_intervals"], "significance"),
}
__all__ = sorted(_HOME)

__getattr__, __dir__ = lazy_exports(__name__, _HOME, globals())
