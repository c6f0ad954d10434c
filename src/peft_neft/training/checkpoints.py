"""Resumable runs: what :func:`~peft_neft.training.train_model` keeps beside Trainer's checkpoints.

Trainer's own checkpoint (``checkpoint-N``: trainable weights, optimizer, scheduler, RNG states) is
completed by ``keep_best.safetensors``: the best-so-far trainable tensors and, in its metadata, the
evaluation history. It is written after Trainer's files, so a checkpoint without it was cut short
and is never resumed from. A finished run leaves ``finished.safetensors`` (its restored best
tensors and statistics) instead of checkpoints, and is not trained again.
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

KEEP_BEST = "keep_best.safetensors"
FINISHED = "finished.safetensors"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def save_state(path: str | os.PathLike, tensors: list[torch.Tensor] | None, state: dict[str, Any]) -> None:
    """Write ``tensors`` (in order) and the JSON-serializable ``state`` to one safetensors file, atomically."""
    payload = {str(i): t.detach().cpu().contiguous() for i, t in enumerate(tensors or [])}
    with atomic_path(Path(path)) as tmp:
        save_file(payload, str(tmp), metadata={"state": json.dumps(state)})


def load_state(path: str | os.PathLike) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The tensors and state :func:`save_state` wrote."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = json.loads(handle.metadata()["state"])
            tensors = [handle.get_tensor(str(i)) for i in range(len(handle.keys()))]
    except Exception as err:  # a damaged file: name it, and what to do
        raise ValueError(f"{path} is not a readable run state ({err}); delete it to train that run again.") from None
    return tensors, state


def resumable_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir``: one whose ``keep_best.safetensors`` reads
    whole (a damaged one is skipped with a warning, for the checkpoint before it)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.fullmatch(p.name))]
    for _, checkpoint in sorted(found, reverse=True):
        if not (checkpoint / KEEP_BEST).is_file():
            continue
        try:
            load_state(checkpoint / KEEP_BEST)
        except ValueError as err:
            logger.warning("%s; resuming from an earlier checkpoint", err)
            continue
        return checkpoint
    return None


def remove_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete the ``checkpoint-N`` folders of a finished run (its result is in ``finished.safetensors``)."""
    for path in Path(output_dir).iterdir():
        if _CHECKPOINT.fullmatch(path.name):
            shutil.rmtree(path, ignore_errors=True)
