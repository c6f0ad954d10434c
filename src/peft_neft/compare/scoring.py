"""A comparison's calibrations: the scores of :mod:`peft_neft.selection.scorers` on its training data.

A calibration is computed once per (score, targets, seed) and cached as ``CHECKPOINTS/<key>.safetensors``
(:func:`~peft_neft.compare.methods.calibration_key`), so every variant that needs it, and a resumed call, reuse it.
While it runs, it checkpoints in ``CHECKPOINTS/<key>.partial/`` (:mod:`peft_neft.selection.calibration_state`), so
a killed call resumes it; that folder is removed once the scores are cached.
Once every run that needs it has finished, it is kept in ``OUT/calibrations/``, where later calls in the folder (a
widened rate grid) find it, and where another comparison can name it as a stored calibration
(``neft[calibration=NAME]:...``, :func:`stored_calibration`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import UsageError
from ..selection import NeuronScores
from ..selection.scorers import get_scorer
from ..selection.neuron_scores import load_scores, save_scores

KEPT = "calibrations"  # the results folder's subfolder of finished calibrations

logger = logging.getLogger(__name__)


def cached_calibration(folder: Path, key: str, score: str, target_modules: Any, load_model: Callable, rows: list[dict],
                       collate_fn: Callable, config: Any, seed: int, device: torch.device,
                       progress: bool, kept: Path | None = None) -> tuple[NeuronScores, dict[str, Any]]:
    """The scores of calibration ``key`` and what it ran with: from ``folder`` (or the ``kept`` ones) if cached, else
    computed (in float32 whatever the training dtype: a cosine calibration's row changes are ~1e-5, and bf16 rounding
    would reorder them, docs/selection.md) and cached in ``folder``. While it runs it checkpoints in
    ``folder/<key>.partial/``, from which a rerun resumes; the folder is removed once the scores are cached."""
    path, partial = folder / f"{key}.safetensors", folder / f"{key}.partial"
    for cached in (path, *([kept / path.name] if kept else [])):
        if cached.is_file():
            logger.info("%s: cached in %s", key, cached)
            shutil.rmtree(partial, ignore_errors=True)  # a kill between caching the scores and removing it
            return load_scores(cached)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_model().to(device)
    lr = config.calibration_lr if config.calibration_lr is not None else config.lr("full")
    resumed = partial.is_dir() and any(partial.iterdir())  # then ``seconds`` counts only this call
    start = time.perf_counter()
    scores = get_scorer(score).score(model, rows, collate_fn=collate_fn, steps=config.calibration_steps,
                                     batch_size=config.batch_size, lr=lr, seed=seed, target_modules=target_modules,
                                     progress=progress, checkpoint_dir=partial)
    seconds = time.perf_counter() - start
    info = {"score": score, "steps": config.calibration_steps, "seconds": seconds,
            **({"resumed": True} if resumed else {}),
            "target_modules": [target_modules] if isinstance(target_modules, str) else list(target_modules),
            "dtype": "float32", **({"lr": lr} if get_scorer(score).needs == "optimizer" else {})}
    save_scores(path, scores, info)
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("%s: computed in %.1f s", key, seconds)
    return scores, info


def keep_calibration(folder: Path, key: str, out: Path) -> None:
    """Move a finished calibration ``key`` from the cache ``folder`` into ``out/calibrations/`` (written atomically;
    a copy, then the cache removed, so a kill between the two loses nothing)."""
    cached = folder / f"{key}.safetensors"
    if not cached.is_file():
        return
    with atomic_path(out / KEPT / cached.name) as tmp:
        shutil.copyfile(cached, tmp)
    cached.unlink()


def stored_calibration(name: str, config: Any) -> tuple[NeuronScores, dict[str, Any]]:
    """The scores of the stored calibration ``name`` (``config.stored_calibrations``) and what they ran with, plus
    where they came from (``info["stored"]``: the name, the file and its sha256)."""
    file = config.stored_calibrations[name]
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    scores, info = load_scores(Path(file))
    logger.info("calibration[stored=%s]: from %s", name, file)
    return scores, {**info, "stored": {"name": name, "file": file, "sha256": digest}}


def check_stored_calibrations(methods: list[Any], config: Any, model: torch.nn.Module) -> None:
    """Refuse, before any work, a method that names a stored calibration the comparison does not give, whose file
    is missing or unreadable, or that was computed on a model of other shapes."""
    for method in methods:
        name = getattr(method, "calibration", None)
        if not name:
            continue
        file = config.stored_calibrations.get(name)
        if file is None:
            raise UsageError(f"{method.spec} names the stored calibration {name!r}, which is not given: pass "
                             f"--stored-calibration {name}=FILE (stored_calibrations in a config), a file a "
                             f"comparison kept in OUT/{KEPT}/.")
        if not Path(file).is_file():
            raise UsageError(f"The stored calibration {name!r} ({file}) does not exist; give the file a comparison "
                             f"kept in OUT/{KEPT}/.")
        try:
            scores, _ = load_scores(Path(file))
            scores.check_model(model)
        except ValueError as err:
            raise UsageError(f"The stored calibration {name!r} ({file}) does not fit this comparison: {err}") from None
