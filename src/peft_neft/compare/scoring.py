"""How a comparison scores and selects rows: its one adapter to the selection library, and its cached calibrations.

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

from ..selection import Budget, NeuronScores, NeuronSelection, calibrate, gradient_scores, select_neurons
from .results import load_scores, save_scores

logger = logging.getLogger(__name__)

# The scores a NeFT method may name, each with what it computes.
SCORES = {
    "cosine": "short full fine-tune of K steps, then 1 - cos of each row before and after (the paper's Eq. 1)",
    "gradient": "minus the row gradient norm over K batches, no update",
}


def score_rows(score: str, model: torch.nn.Module, rows: list[dict], *, collate_fn: Callable, steps: int,
               batch_size: int, lr: float, seed: int, target_modules: Any, progress: bool) -> NeuronScores:
    """The ``score`` of every target row of ``model`` on ``rows`` (lower = selected first); the model is left as it was."""
    if score == "cosine":
        return calibrate(model, rows, steps=steps, target_modules=target_modules, lr=lr, batch_size=batch_size,
                         seed=seed, collate_fn=collate_fn, progress=progress)
    return gradient_scores(model, rows, collate_fn=collate_fn, batches=steps, target_modules=target_modules,
                           batch_size=batch_size, seed=seed)


def spread_selection(scores: NeuronScores, budget: Budget, strategy: str, seed: int, spread: str) -> NeuronSelection:
    """The rows ``scores`` rank first under ``budget``, spread ``global``ly, ``per-layer`` or ``per-module`` (each
    target module its share in proportion to its size, ranked within it; the remainder from the global ranking)."""
    if spread != "per-module":
        return select_neurons(scores, budget=budget, strategy=strategy, seed=seed, per_layer_quota=spread == "per-layer")
    # select_neurons shares a budget out among decoder blocks (the first number of a name): one number per module.
    names = list(scores.scores)
    grouped = NeuronScores({f"{i}.{n}": scores.scores[n] for i, n in enumerate(names)},
                           {f"{i}.{n}": scores.in_features[n] for i, n in enumerate(names)},
                           scores.total_params, scores.method, scores.metadata)
    chosen = select_neurons(grouped, budget=budget, strategy=strategy, seed=seed, per_layer_quota=True)
    back = {f"{i}.{n}": n for i, n in enumerate(names)}
    metadata = {**chosen.metadata, "in_features": dict(scores.in_features), "out_features": scores.out_features,
                "per_layer_quota": False, "spread": "per-module"}
    return NeuronSelection(rows={back[n]: r for n, r in chosen.rows.items()},
                           scores={back[n]: s for n, s in chosen.scores.items()}, metadata=metadata)


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
    scores = score_rows(score, model, rows, collate_fn=collate_fn, steps=config.calibration_steps,
                        batch_size=config.batch_size, lr=lr, seed=seed, target_modules=target_modules,
                        progress=progress)
    seconds = time.perf_counter() - start
    info = {"score": score, "steps": config.calibration_steps, **({"lr": lr} if score == "cosine" else {}),
            "seconds": seconds,
            "target_modules": [target_modules] if isinstance(target_modules, str) else list(target_modules),
            "dtype": "float32"}
    save_scores(path, scores, info)
    logger.info("%s: computed in %.1f s", key, seconds)
    return scores, info
