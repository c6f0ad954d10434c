"""``NeuronSelection``: which output neurons of which modules NeFT trains, with their provenance.

Besides save/load it offers the paper's set operations (``union`` is its NeFT_Union, :func:`overlap`
its Table 5), a per-layer summary and a plot.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .._shapes import module_shapes
from .._targets import layer_index
from ..atomic import atomic_path
from ..tuner.config import check_rows, normalize_module_names
from ..tuner.fingerprint import check_fingerprint
from .plot import plot_selection

_ROWS = "rows/"
_SCORES = "scores/"
_FORMAT = "peft-neft-selection/1"


@dataclass
class NeuronSelection:
    """Selected rows per module (sorted unique int64), optional per-neuron scores and metadata.

    ``metadata`` is JSON-serializable: the scoring method, the budget, a fingerprint of the base
    model's shapes and whatever else produced the selection.
    """

    rows: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_neurons(self) -> int:
        return sum(int(r.numel()) for r in self.rows.values())

    @property
    def fingerprint(self) -> str | None:
        """Hash of the base model's weight shapes the selection was made on (None for hand-made ones)."""
        return self.metadata.get("fingerprint")

    @property
    def num_params(self) -> int | None:
        """Trainable parameters the selection costs (None when ``in_features`` is unknown)."""
        in_features = self.metadata.get("in_features", {})
        if not all(name in in_features for name in self.rows):
            return None
        return sum(in_features[name] * int(r.numel()) for name, r in self.rows.items())

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error unless every selected module exists in ``model`` with the rows in range
        and, when the selection records one, the model's fingerprint matches."""
        for name, (out_f, _) in module_shapes(model, self.rows, "the selection").items():
            rows = self.rows[name]
            if rows.numel() and int(rows.max()) >= out_f:
                raise ValueError(
                    f"The selection picks row {int(rows.max())} of module {name!r}, which has {out_f} output neurons: "
                    "it was made for another base model."
                )
        check_fingerprint(model, self.fingerprint, "the selection", "Select neurons on the model you will train.")

    def _combine(self, other: "NeuronSelection", op: str) -> "NeuronSelection":
        if not isinstance(other, NeuronSelection):
            raise TypeError(f"Can only combine with another NeuronSelection, got {type(other).__name__}.")
        if self.fingerprint and other.fingerprint and self.fingerprint != other.fingerprint:
            raise ValueError(
                f"Cannot {op} selections made on different base models (fingerprints {self.fingerprint} and "
                f"{other.fingerprint}). Select both on the same base model."
            )
        rows = {}
        for name in sorted(set(self.rows) | set(other.rows)):
            a = self.rows.get(name, torch.empty(0, dtype=torch.int64))
            b = other.rows.get(name, torch.empty(0, dtype=torch.int64))
            merged = torch.unique(torch.cat([a, b])) if op == "union" else a[torch.isin(a, b)]
            if merged.numel():
                rows[name] = merged.to(torch.int64)
        same_scores = set(self.scores) == set(other.scores) and all(
            torch.equal(self.scores[n], other.scores[n]) for n in self.scores
        )
        in_features = {**other.metadata.get("in_features", {}), **self.metadata.get("in_features", {})}
        out_features = {**other.metadata.get("out_features", {}), **self.metadata.get("out_features", {})}
        metadata = {
            "method": op,
            "parts": [_describe(self.metadata), _describe(other.metadata)],
            "fingerprint": self.fingerprint or other.fingerprint,
            "total_params": self.metadata.get("total_params", other.metadata.get("total_params")),
            "in_features": in_features,
            "out_features": out_features,
        }
        result = NeuronSelection(rows=rows, scores=dict(self.scores) if same_scores else {}, metadata=metadata)
        result.metadata["achieved_neurons"] = result.num_neurons
        if result.num_params is not None:
            result.metadata["achieved_params"] = result.num_params
        return result

    def union(self, other: "NeuronSelection") -> "NeuronSelection":
        """Rows selected by either (the paper's NeFT_Union, e.g. translation + summarization neurons)."""
        return self._combine(other, "union")

    def intersection(self, other: "NeuronSelection") -> "NeuronSelection":
        """Rows selected by both; modules left without rows are dropped."""
        return self._combine(other, "intersection")

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per decoder block: selected neurons per module kind, and their parameters."""
        in_features = self.metadata.get("in_features", {})
        out_features = self.metadata.get("out_features", {})
        table: dict[Any, dict[str, Any]] = {}
        for name, rows in self.rows.items():
            index = layer_index(name)
            entry = table.setdefault(index, {"layer": "-" if index is None else index, "neurons": 0, "params": 0})
            kind = name.rsplit(".", 1)[-1]
            count = int(rows.numel())
            entry[kind] = f"{count}/{out_features[name]}" if name in out_features else str(count)
            entry["neurons"] += count
            entry["params"] += count * in_features.get(name, 0)
        return [table[k] for k in sorted(table, key=lambda k: (k is None, k if k is not None else 0))]

    def summary(self) -> str:
        """A per-layer table (selected/total rows per module kind) and how close the budget was hit."""
        rows = self.summary_rows()
        kinds = sorted({k for r in rows for k in r} - {"layer", "neurons", "params"})
        header = ["layer", *kinds, "neurons", "params"]
        lines = [header] + [[str(r.get(c, "0")) for c in header] for r in rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
        text.append(self.budget_report())
        return "\n".join(text)

    def budget_report(self) -> str:
        """One line: neurons, parameters, share of the model, and the distance to the requested budget."""
        params = self.num_params
        line = f"{self.num_neurons} neurons in {len(self.rows)} modules"
        total = self.metadata.get("total_params")
        if params is not None:
            line += f", {params} trainable parameters"
            if total:
                line += f" ({100.0 * params / total:.3f}% of {total})"
        budget = self.metadata.get("budget")
        if budget and budget.get("unit") == "params" and params is not None:
            diff = params - budget["value"]
            line += f"; budget {budget['value']:.0f} params, achieved {diff:+.0f} ({100.0 * diff / budget['value']:+.4f}%)"
        elif budget and budget.get("unit") == "neurons":
            line += f"; budget {budget['value']:.0f} neurons, achieved {self.num_neurons - budget['value']:+.0f}"
        return line

    def plot(self, path: str | os.PathLike) -> None:
        """Write a PNG of the selected neurons per layer and module (see :mod:`peft_neft.selection.plot`)."""
        title = self.metadata.get("method", "selection")
        if self.metadata.get("strategy"):
            title += f" / {self.metadata['strategy']}"
        plot_selection(self.rows, self.metadata.get("out_features", {}), f"{title}: {self.budget_report()}", path)

    def save(self, path: str | os.PathLike) -> None:
        """Write the selection to one safetensors file (no pickle), atomically."""
        if os.path.isdir(path):
            raise ValueError(f"Cannot write the selection to {os.fspath(path)!r}: it is a folder. Give a file path.")
        tensors = {_ROWS + name: rows.to(torch.int64).contiguous().cpu() for name, rows in self.rows.items()}
        tensors.update({_SCORES + name: s.detach().contiguous().cpu() for name, s in self.scores.items()})
        header = {"format": _FORMAT, "metadata": json.dumps(self.metadata, sort_keys=True)}
        header["sha256"] = _digest(header["metadata"], tensors)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronSelection":
        """Read a selection written by :meth:`save`; a clear ``ValueError`` names what is wrong with a bad file."""
        where = os.fspath(path)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"No neuron selection file at {where!r}.")
        with open(where, "rb") as handle:
            start = handle.read(16).lstrip()
        if start[:1] in (b"{", b"["):
            raise ValueError(
                f"{where!r} is not a safetensors file but text (JSON?). A selection file is written by "
                "NeuronSelection.save or `peft-neft select`; for a dict of rows pass it to NeFTConfig(neurons=...) directly."
            )
        try:
            with safe_open(where, framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{where!r} is not a readable neuron selection file ({err}): it is truncated or corrupt. "
                "Write it again with NeuronSelection.save or `peft-neft select`."
            ) from err
        if header.get("format") != _FORMAT:
            raise ValueError(f"{where!r} is not a peft-neft neuron selection (format {header.get('format')!r}).")
        rows = {k[len(_ROWS):]: v for k, v in tensors.items() if k.startswith(_ROWS)}
        scores = {k[len(_SCORES):]: v for k, v in tensors.items() if k.startswith(_SCORES)}
        try:
            if "sha256" in header and header["sha256"] != _digest(header.get("metadata", "{}"), tensors):
                raise ValueError("its content does not match the checksum written with it (changed or damaged since).")
            _check_loaded(rows, scores)
            metadata = _parse_metadata(header.get("metadata", "{}"))
        except ValueError as err:
            raise ValueError(f"{where!r} is a corrupt neuron selection: {err} Write it again.") from err
        return cls(rows=rows, scores=scores, metadata=metadata)


def _digest(metadata: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a selection file's metadata and tensors (names, dtypes, shapes, bytes); safetensors has none."""
    digest = hashlib.sha256(metadata.encode())
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _check_loaded(rows: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]) -> None:
    normalize_module_names(list(rows), "it")
    for name, r in rows.items():
        check_rows(r, name)
    for name, s in scores.items():
        if s.ndim != 1 or not s.dtype.is_floating_point:
            raise ValueError(f"the scores of module {name!r} must be a 1-D float tensor, got {s.dtype} {tuple(s.shape)}.")


def _parse_metadata(text: str) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"its metadata is not valid JSON ({err}).") from err
    if not isinstance(metadata, dict):
        raise ValueError(f"its metadata must be a JSON object, got a {type(metadata).__name__}.")
    if metadata.get("fingerprint") is not None and not isinstance(metadata["fingerprint"], str):
        raise ValueError("its metadata's fingerprint must be a string.")
    return metadata


def _describe(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: metadata[k] for k in ("method", "strategy", "budget", "parts") if k in metadata}


def overlap(a: NeuronSelection, b: NeuronSelection) -> float:
    """Overlap proportion as in the paper's Table 5: the share of selected neurons both selections contain.

    For two selections of the same size (the paper compares NeFT_x% with NeFT_x%) this is
    ``|A & B| / |A|``; for different sizes it is ``|A & B| / min(|A|, |B|)``, so a selection
    contained in the other has overlap 1.
    """
    smaller = min(a.num_neurons, b.num_neurons)
    if smaller == 0:
        raise ValueError("overlap() needs two non-empty selections.")
    return a.intersection(b).num_neurons / smaller
