"""The start of a ``--workers`` process. Only the standard library at import: a spawned worker imports this
module to run :func:`start_worker` before anything else, so torch, transformers and torchao (whose imports
print) load after the command's logger levels are in place."""

from __future__ import annotations

import logging
import os
import warnings


def start_worker(threads: int, level: int, filters: list, levels: dict[str, int], bars: bool) -> None:
    """A worker process: the parent's loggers' levels and warning filters (so the libraries' import chatter the
    command hides stays hidden), peft_neft's records on stderr, transformers' progress bars (``Loading weights``)
    shown only if ``bars``, and its share of torch's threads."""
    for name, logger_level in levels.items():
        logging.getLogger(name).setLevel(logger_level)
    warnings.filters[:] = filters
    package = logging.getLogger("peft_neft")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[worker {os.getpid()}] %(message)s"))
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    import torch  # after the levels: importing torch is the first import that can print
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    if not bars:
        hf_logging.disable_progress_bar()
