"""Atomic writes: a file appears complete under its final name, or not at all; nothing else is touched.

Every writer here first writes to a hidden temporary on the target's file system (``.<target name>.<random>.tmp``
beside a file or folder; :mod:`peft_neft.adapters.saving` uses ``.neft-save.<random>.tmp`` inside an adapter folder) and moves the result into place
with ``os.replace`` (one atomic rename on POSIX and Windows). A process killed mid-write leaves only such hidden
temporaries; the next write to the same target removes them. One writer per target at a time is assumed: a
second concurrent writer's temporaries would be removed as leftovers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)



def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def leftovers(folder: Path, prefix: str, suffix: str) -> list[Path]:
    """Temporaries ``<prefix><random><suffix>`` in ``folder``, left by an interrupted write."""
    if not folder.is_dir():
        return []
    return [
        entry for entry in folder.iterdir()
        if entry.name.startswith(prefix) and entry.name.endswith(suffix)
        and "." not in entry.name[len(prefix):-len(suffix)]  # mkstemp's random part has no dot
    ]


def remove(path: Path) -> None:
    """Remove a file, link or folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it replaces ``path`` in one rename.

    If the body raises (or the process dies), ``path`` keeps its previous contents (or stays absent).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in leftovers(target.parent, f".{target.name}.", ".tmp"):
        remove(leftover)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, target)
        logger.debug("wrote %s", target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def recover_folder(target: Path) -> None:
    """Undo what a kill during a folder swap left beside ``target``: move a hidden old folder back, drop temporaries."""
    for old in leftovers(target.parent, f".{target.name}.", ".old"):
        if not target.exists() and (old / "contents").exists():
            os.replace(old / "contents", target)  # a kill between the two renames hid it there
        remove(old)
    for leftover in leftovers(target.parent, f".{target.name}.", ".tmp"):
        remove(leftover)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes the place of ``path`` as a whole.

    The old folder is moved aside to ``.<name>.<random>.old/contents`` and the new one renamed into place.
    If the second rename fails, the old folder is moved back; if the process dies between the two renames,
    the next ``atomic_dir`` on the same path moves it back before anything else.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; give it a normal folder's mode
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "contents")
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old / "contents", target)
                raise
            finally:
                if target.exists():  # never remove the only copy of the old folder
                    shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        logger.debug("wrote %s/", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
