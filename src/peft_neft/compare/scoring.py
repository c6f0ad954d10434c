"""A comparison's calibrations: the scores of :mod:`peft_neft.selection.scorers` on its training data.

A calibration is computed once per (score, targets, seed) and cached as ``CHECKPOINTS/<key>.safetensors``
(:func:`~peft_neft.compare.methods.calibration_key`), so every variant that needs it, and a resumed call, reuse it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..selection import NeuronScores
from ..selection.scorers import get_scorer
from .results import load_scores, save_scores

logger = logging.getLogger(__name__)


def cached_calibration(folder: Path, key: str, score: str, target_modules: Any, load_model: Callable, rows: list[dict],
                       collate_fn: Callable, config: Any, seed: int, device: torch.device,
                       progress: bool) -> tuple[NeuronScores, dict[str, Any]]:
    """The scores of calibration ``key`` and what it ran with: from ``folder`` if cached, else computed (in float32
    whatever the training dtype: a cosine calibration's row changes are ~1e-5, and bf16 rounding would reorder them,
    docs/selection.md) and cached."""
    path = folder / f"{key}.safetensors"
    if path.is_file():
        logger.info("%s: cached in %s", key, path)
        return load_scores(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_model().to(device)
    lr = config.calibration_lr if config.calibration_lr is not None else config.lr("full")
    start = time.perf_counter()
    scores = get_scorer(score).score(model, rows, collate_fn=collate_fn, steps=config.calibration_steps,
                                     batch_size=config.batch_size, lr=lr, seed=seed, target_modules=target_modules,
                                     progress=progress)
    seconds = time.perf_counter() - start
    info = {"score": score, "steps": config.calibration_steps, "seconds": seconds,
            "target_modules": [target_modules] if isinstance(target_modules, str) else list(target_modules),
            "dtype": "float32", **({"lr": lr} if get_scorer(score).needs == "optimizer" else {})}
    save_scores(path, scores, info)
    logger.info("%s: computed in %.1f s", key, seconds)
    return scores, info
