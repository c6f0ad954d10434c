"""The one rule for where a command may write, checked before any model loads.

An output never is, lies inside or holds (for a folder) a path the command reads; a non-empty folder that
the command did not make is replaced or written into only with ``overwrite``; and the place must be writable.
Standard library only: the command line checks its outputs before importing torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Union

from .errors import UsageError

PathLike = Union[str, os.PathLike]


def check_output(out: PathLike, inputs: Mapping[PathLike, str], *, folder: bool, option: str = "--out",
                 overwrite: bool = False, ours: Callable[[Path], bool] | None = None, replaced: bool = False) -> None:
    """Refuse ``out`` unless writing it loses nothing the user has: a :class:`~peft_neft.errors.UsageError` (a
    ``ValueError``) of one line naming it, the conflict and the fix.

    Args:
        out: the file or folder the command is about to write.
        inputs: ``path -> what it is`` ("model (--model)") for every path the command reads; paths
            that do not exist (hub ids, ``default``) are skipped.
        folder: whether ``out`` is a folder (else a file; an existing file there is replaced).
        option: how the user gave ``out``, for the message.
        overwrite: the user allowed replacing (or writing into) a non-empty folder that is not the command's own.
        ours: tells whether an existing non-empty folder is one this command made (e.g. a results folder to
            resume); such a folder needs no ``overwrite``.
        replaced: the folder is replaced as a whole, so it can be neither the working folder nor one around it.
    """
    path = Path(out)
    target = path.resolve()
    for source, role in inputs.items():
        if not os.path.lexists(source):
            continue
        read = Path(source).resolve()
        if target == read:
            raise UsageError(f"{option} {out} is the {role}, which this command reads; writing it would destroy it. "
                             "Choose another path.")
        if read in target.parents:
            raise UsageError(f"{option} {out} lies inside the {role} {source}, which this command reads; "
                             "choose a path outside it.")
        if folder and target in read.parents:
            raise UsageError(f"{option} {out} holds the {role} {source}, which this command reads; "
                             "choose a folder outside it.")
    if folder and replaced and (target == Path.cwd().resolve() or target in Path.cwd().resolve().parents):
        raise UsageError(f"{option} {out} is the current folder or holds it, so it cannot be replaced; "
                         "choose a new folder.")
    if path.is_dir() and not folder:
        raise UsageError(f"{option} {out} is a folder; give the path of a file to write.")
    if path.exists() and not path.is_dir() and folder:
        raise UsageError(f"{option} {out} is a file; give a folder (it is created if missing).")
    held = sorted(p.name for p in path.iterdir()) if folder and path.is_dir() else []
    if held and not overwrite and not (ours and ours(path)):
        raise UsageError(f"{option} {out} already holds files this command did not write (such as {held[0]}); pass "
                         "--overwrite to replace them, or choose a new or empty folder.")
    _check_writable(path, option)


def _check_writable(path: Path, option: str) -> None:
    """Refuse a path under a file, or in a folder this process may not write."""
    where = path if path.is_dir() else path.parent
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise UsageError(f"{option} {path} lies under {where}, which is a file, not a folder; choose another path.")
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path} cannot be written: no write permission in {where}; choose a writable "
                         "path.")
