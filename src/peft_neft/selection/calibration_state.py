"""Calibrations that checkpoint while they run: the state a rerun resumes from, and the run it must belong to.

A calibration given a ``checkpoint_dir`` writes its progress there every ``save_every`` batches or steps, and the
same call resumes from it, giving the scores an uninterrupted run gives (to the bit):

* a batch scorer (taylor, gradient, activation) keeps :data:`STATE_FILE`: its per-row float64 totals, the batches
  done, their losses or token count, and what the run is (:class:`BatchState`);
* an optimizer scorer (cosine, movement) keeps Trainer's ``checkpoint-N`` folders (weights, optimizer, scheduler,
  random states), each finished by :data:`LOSSES_FILE`, and what the run is in :data:`RUN_FILE`
  (:func:`claim_folder`, :func:`resumable_checkpoint`).

State of another run (other settings, model or targets) is refused, naming the file to delete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path

logger = logging.getLogger(__name__)

STATE_FILE = "calibration-state.safetensors"
RUN_FILE = "calibration-run.json"
LOSSES_FILE = "calibration-losses.json"  # written last into a Trainer checkpoint: the checkpoint is complete
DEFAULT_SAVE_EVERY = 10  # scorers.py, which imports no torch, spells it out
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def _check_same_run(file: Path, stored: dict[str, Any], run: dict[str, Any]) -> None:
    """Refuse state written by another run, naming what differs, the file and the fix."""
    differs = sorted(k for k in stored.keys() | run.keys() if stored.get(k) != run.get(k))
    if differs:
        raise ValueError(f"{os.fspath(file)} holds the state of another calibration (it differs in "
                         f"{', '.join(differs)}); delete it (or its folder) to start this one over, or give another "
                         "checkpoint_dir.")


def check_save_every(save_every: int) -> None:
    """Refuse a ``save_every`` that is not a positive whole number."""
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise ValueError(f"save_every must be a whole number of batches or steps, at least 1, got {save_every!r}.")


class BatchState:
    """A batch scorer's running totals: ``totals`` (per row, float64), ``done`` batches, their ``losses`` and
    ``tokens``; loaded from ``folder`` when it holds the state of the same ``run``, saved there by :meth:`step`."""

    def __init__(self, folder: str | os.PathLike | None, run: dict[str, Any], totals: dict[str, torch.Tensor],
                 save_every: int = DEFAULT_SAVE_EVERY) -> None:
        check_save_every(save_every)
        self.file = Path(folder, STATE_FILE) if folder is not None else None
        self.run, self.totals, self.save_every = run, totals, save_every
        self.done, self.losses, self.tokens = 0, [], 0
        if self.file is not None and self.file.is_file():
            self._load()

    def _load(self) -> None:
        with safe_open(os.fspath(self.file), framework="pt") as handle:
            meta = handle.metadata()
            _check_same_run(self.file, json.loads(meta["run"]), self.run)
            self.totals.update({name: handle.get_tensor(name) for name in handle.keys()})
        self.done, self.losses, self.tokens = int(meta["done"]), json.loads(meta["losses"]), int(meta["tokens"])
        logger.info("calibration: resumed from %s after %d of %d batches", self.file, self.done, self.run["batches"])

    def step(self) -> None:
        """Count one more batch done; every ``save_every`` batches, write the state (atomically)."""
        self.done += 1
        if self.file is not None and self.done % self.save_every == 0:
            metadata = {"run": json.dumps(self.run), "done": str(self.done), "losses": json.dumps(self.losses),
                        "tokens": str(self.tokens)}
            with atomic_path(self.file) as tmp:
                save_file({n: t.contiguous() for n, t in self.totals.items()}, os.fspath(tmp), metadata=metadata)


def claim_folder(folder: str | os.PathLike, run: dict[str, Any]) -> None:
    """Mark ``folder`` as the checkpoint folder of ``run`` (:data:`RUN_FILE`); refuse one that holds another run's."""
    file = Path(folder, RUN_FILE)
    if file.is_file():
        _check_same_run(file, json.loads(file.read_text()), run)
        return
    with atomic_path(file) as tmp:
        tmp.write_text(json.dumps(run, indent=1))


def resumable_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (one holding :data:`LOSSES_FILE`), or None.

    Incomplete ones (a kill while Trainer saved) are removed: Trainer's rotation would keep them over new ones.
    """
    found = []
    for path in Path(folder).glob("checkpoint-*"):
        if (match := _CHECKPOINT.fullmatch(path.name)) and (path / LOSSES_FILE).is_file():
            found.append((int(match.group(1)), path))
        elif match:
            logger.info("calibration: %s is incomplete (killed while saving); removed", path)
            shutil.rmtree(path)
    return max(found)[1] if found else None
