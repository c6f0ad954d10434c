"""Task data as ``datasets.Dataset`` objects with two string columns, ``source`` and ``target``.

Translation reads line-aligned text files (plain or gzipped) or JSON lines; summarization reads JSON
lines. Either also reads a ``datasets`` dataset: a ``save_to_disk`` folder or a Hub dataset name
(:func:`data_source` tells which an argument is, without importing torch). :func:`django_translation_pairs` builds the demo's English->French set from the message
catalogs that ship inside Django, so the demo needs no downloaded data.
"""

from __future__ import annotations

import contextlib
import gettext
import gzip
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import datasets.exceptions
import datasets.utils
from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)


def read_data_file(path: str | os.PathLike) -> Dataset:
    """One local data file as a ``datasets.Dataset``: JSON lines (``.jsonl``/``.json``) with their fields, or one
    ``text`` per line; gzipped (``.gz``) files too. A missing, empty or unreadable file is a clear error."""
    file = _require_file(path)
    with (gzip.open if file.name.endswith(".gz") else open)(file, "rb") as handle:
        if not handle.read(1):
            raise ValueError(f"Data file {os.fspath(file)!r} is empty; give a file with one example per line.")
    is_json = file.name.endswith(_JSON_SUFFIXES)
    with _datasets_progress_bars_hidden():
        try:
            return datasets.load_dataset("json" if is_json else "text", data_files=os.fspath(file), split="train")
        except (datasets.exceptions.DatasetGenerationError, StopIteration) as err:
            cause = err.__cause__ or err
            kind = "JSON lines" if is_json else "text lines"
            raise ValueError(f"Data file {os.fspath(file)!r} could not be read as {kind} "
                             f"({(str(cause).splitlines() or [type(cause).__name__])[0]}).") from err


@contextlib.contextmanager
def _datasets_progress_bars_hidden() -> Iterator[None]:
    was_enabled = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.utils.enable_progress_bars()

_JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file {os.fspath(path)!r} does not exist; check the path.")
    return path


def _read_lines(path: Path) -> list[str]:
    return list(read_data_file(path)["text"])


def data_source(spec: str | os.PathLike) -> Literal["file", "folder", "hub"]:
    """What a data argument names: a local file, a local folder (``save_to_disk``), or a Hub dataset name.

    A missing path is a ``FileNotFoundError``. An argument is a path when it is absolute, starts with ``.`` or
    ``~``, has a backslash, two slashes, or a dot in its last part (a file suffix); otherwise a Hub name.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        return "folder"
    last = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if os.path.isabs(text) or text.startswith((".", "~")) or "\\" in text or text.count("/") > 1 or "." in last:
        raise FileNotFoundError(f"Data file {text!r} does not exist; check the path.")
    return "hub"


def read_dataset(spec: str | os.PathLike, split: str = "train") -> Dataset:
    """A ``datasets`` dataset: a ``save_to_disk`` folder (a ``Dataset``, or the ``split`` of a ``DatasetDict``),
    or the ``split`` of a Hub dataset name. What cannot be read is a ``ValueError`` naming it and the fix."""
    text = os.fspath(spec)
    if data_source(text) == "folder":
        try:
            loaded = datasets.load_from_disk(text)
        except FileNotFoundError:
            raise ValueError(f"{text!r} is a folder but not a dataset saved with save_to_disk; give such a folder, "
                             "a data file, or a Hub dataset name.") from None
    else:
        with _datasets_progress_bars_hidden():
            try:
                loaded = datasets.load_dataset(text, split=split)
            except Exception as err:  # datasets raises many kinds (connection, not found, offline mode)
                offline = "HF_HUB_OFFLINE is set, so " if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
                cause = (str(err).splitlines() or [type(err).__name__])[0]
                raise ValueError(
                    f"{text!r} is no local file or folder, so it was taken as a Hugging Face Hub dataset, and it could "
                    f"not be loaded ({cause}); {offline}a Hub dataset needs network access. Where the Hub is "
                    "reachable, load it and save it with dataset.save_to_disk(FOLDER), then give FOLDER.") from err
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise ValueError(f"{text!r} holds the splits {list(loaded)}, not {split!r}; save the data with a "
                             f"{split!r} split, or give that split as its own dataset.")
        return loaded[split]
    return loaded


def load_pairs(
    source: str | os.PathLike,
    target: str | os.PathLike | None = None,
    *,
    split: str = "train",
    source_field: str = "source",
    target_field: str = "target",
    limit: int | None = None,
) -> Dataset:
    """Load (source, target) pairs: two line-aligned text files, one JSON-lines file with two fields, or a
    ``datasets`` dataset with two fields (:func:`read_dataset`; ``split`` of a ``DatasetDict`` or Hub dataset).

    Text files may be gzipped (``.gz``). ``limit`` keeps the first ``limit`` pairs (a deterministic subset).
    """
    kind = data_source(source)
    if target is not None:
        src_path, tgt_path = _require_file(source), _require_file(target)
        sources, targets = _read_lines(src_path), _read_lines(tgt_path)
        if len(sources) != len(targets):
            raise ValueError(
                f"{src_path} has {len(sources)} lines but {tgt_path} has {len(targets)}; line-aligned files must "
                "have the same number of lines (one sentence pair per line)."
            )
    else:
        if kind == "file" and not os.fspath(source).endswith(_JSON_SUFFIXES):
            raise ValueError(
                f"{source} is not JSON lines; pass a .jsonl(.gz) file, a source and a target text file, or a dataset."
            )
        table = read_data_file(source) if kind == "file" else read_dataset(source, split)
        missing = [f for f in (source_field, target_field) if f not in table.column_names]
        if missing:
            raise ValueError(
                f"{source} has no field(s) {missing}; it has {table.column_names}. "
                "Name the fields with --source-field/--target-field."
            )
        sources, targets = list(table[source_field]), list(table[target_field])
        for row, (s, t) in enumerate(zip(sources, targets), 1):
            if not isinstance(s, str) or not isinstance(t, str):
                raise ValueError(f"{source} row {row}: '{source_field}' and '{target_field}' must be text, "
                                 f"got {s!r} and {t!r}.")
    pairs = [(s.strip(), t.strip()) for s, t in zip(sources, targets) if s and t and s.strip() and t.strip()]
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise ValueError(f"No non-empty (source, target) pairs in {source}" + (f" / {target}" if target else "") + ".")
    logger.debug("read %d pairs from %s%s (%s%s)", len(pairs), os.fspath(source), f" / {os.fspath(target)}" if target
                 else "", kind, f", split {split}" if kind != "file" else "")
    return Dataset.from_dict({"source": [p[0] for p in pairs], "target": [p[1] for p in pairs]})


_PLACEHOLDER = re.compile(r"%|\{|\}|<|>")


def django_translation_pairs(language: str = "fr") -> dict[str, Dataset]:
    """English -> ``language`` message pairs from Django's compiled catalogs, split 80/10/10 by a hash.

    Plural and context entries and strings with format placeholders or markup are dropped, as are
    entries without two letters. The split depends only on the English text, so it is stable.
    """
    import django

    root = Path(django.__file__).parent
    pairs: dict[str, str] = {}
    for mo in sorted(root.glob(f"**/locale/{language}/LC_MESSAGES/*.mo")):
        with mo.open("rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog
        for key, value in catalog.items():
            if not isinstance(key, str) or not key or "\x04" in key or not isinstance(value, str):
                continue
            key, value = key.strip(), value.strip()
            if _PLACEHOLDER.search(key) or _PLACEHOLDER.search(value) or not value:
                continue
            if len(re.findall(r"[A-Za-z]", key)) < 2:
                continue
            pairs.setdefault(key, value)
    if not pairs:
        raise FileNotFoundError(f"Django ships no '{language}' message catalogs here ({root}); try language='fr'.")
    splits: dict[str, dict[str, list[str]]] = {s: {"source": [], "target": []} for s in ("train", "validation", "test")}
    for key in sorted(pairs):
        bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10
        split = "test" if bucket == 0 else "validation" if bucket == 1 else "train"
        splits[split]["source"].append(key)
        splits[split]["target"].append(pairs[key])
    return {name: Dataset.from_dict(columns) for name, columns in splits.items()}


def hold_out_validation(train: Dataset, fraction: float = 0.1, limit: int = 200) -> tuple[Dataset, Dataset]:
    """Split the last ``fraction`` of ``train`` (at most ``limit`` pairs) off as validation data."""
    held_out = min(limit, int(len(train) * fraction))
    if held_out == 0:
        raise ValueError(f"Too few training pairs ({len(train)}) to hold out a validation split; give validation "
                         "data (--validation).")
    cut = len(train) - held_out
    return train.select(range(cut)), train.select(range(cut, len(train)))
