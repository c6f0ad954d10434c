"""Side-by-side comparison of fine-tuning methods on one task: NeFT vs LoRA vs full and partial FT.

``results.json`` holds every finished (method, seed) run, ``results.md`` the table, rate searches and paired
tests, ``results.png`` a point per method per metric with paired-bootstrap intervals (``results-lr.png``: validation
loss against the rate), ``outputs/`` the
per-sentence outputs. Modules: :mod:`.methods` (names, trainable models), :mod:`.config`,
:mod:`.run` (the grid), :mod:`.evaluate` (generation, size, memory), :mod:`.results` (folder I/O),
:mod:`.report` (table, plot) and :mod:`.significance` (paired tests, intervals).
"""

from .config import CompareConfig
from .methods import DEFAULT_LR, Method, paired_baseline, parse_method, parse_methods, prepare_model, select_for
from .report import markdown_table, plot, summarize, write_report
from .results import RESULTS_FORMAT, read_outputs, run_key
from .run import compare
from .significance import paired_table, paired_tests, run_intervals

__all__ = [
    "DEFAULT_LR", "RESULTS_FORMAT", "CompareConfig", "Method", "compare",
    "markdown_table", "paired_baseline", "paired_table", "paired_tests", "parse_method", "parse_methods", "plot",
    "prepare_model", "read_outputs", "run_intervals", "run_key", "select_for", "summarize", "write_report",
]
