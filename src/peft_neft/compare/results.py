"""A comparison folder on disk: ``results.json`` (identity and finished runs) and per-sentence outputs.

Every finished (method, seed) run is written at once, atomically, and never redone, so an
interrupted grid resumes where it stopped. A folder holds one configuration only: its identity
(settings, resolved device and dtype, data fingerprint, model) must match to resume.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypedDict

import torch
from datasets import Dataset

from ..atomic import atomic_path
from ..errors import UsageError

RESULTS_FORMAT = "peft-neft-compare/1"


class RunResult(TypedDict, total=False):
    """One training's row in ``results.json`` (``"trainings"``); a run (``"runs"``) is its best training's row with
    ``lr_search`` beside it, and ``intervals`` once its figures are stored. Older folders may lack the later keys."""

    method: str  # the method's canonical spec
    kind: str
    strategy: str | None  # NeFT's rows: lowest, random or reversed
    seed: int
    lr: float
    steps_run: int
    max_steps: int
    stop_reason: str | None  # plateau, max_steps or diverged
    best_step: int
    diverged_step: int | None
    best_val_loss: float
    curve: list[dict[str, Any]]
    trainable_params: int
    total_params: int
    trainable_pct: float
    time_per_step_s: float
    train_seconds: float
    eval_seconds: float
    memory_mb: float
    memory_kind: str
    adapter_bytes: int
    scores: dict[str, float] | None  # None: diverged
    signatures: dict[str, str]
    device: str
    calibration: dict[str, Any] | None  # what the NeFT rows' calibration ran with
    lr_search: list[dict[str, Any]]
    intervals: dict[str, Any]


def run_key(spec: str, seed: int) -> str:
    """The key of one run in ``results["runs"]``: ``"lora:8@seed0"``."""
    return f"{spec}@seed{seed}"


def training_key(spec: str, seed: int, lr: float) -> str:
    """The key of one training of a run's learning-rate search in ``results["trainings"]``: ``"lora:8@seed0@lr0.001"``."""
    return f"{run_key(spec, seed)}@lr{lr:.6g}"


def diverged(row: dict[str, Any]) -> bool:
    """Whether a training or run ended with a non-finite validation loss: no scores, outputs or adapter."""
    return row.get("stop_reason") == "diverged"


def check_scored(results: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming it, a run that has no scores and did not diverge (a cut-short or edited file)."""
    for key, run in results["runs"].items():
        if not isinstance(run, dict) or (not diverged(run) and not isinstance(run.get("scores"), dict)):
            raise ValueError(f"{path}: run {key} has no scores (the file was cut short or edited); delete its entry "
                             "from \"runs\" and run the comparison again to redo it.")


def data_fingerprint(data: dict[str, Dataset]) -> dict[str, Any]:
    """Row count and a content hash of each split, so a folder never mixes two data sets."""
    out = {}
    for split, table in data.items():
        digest = hashlib.sha256(json.dumps([list(table["source"]), list(table["target"])]).encode()).hexdigest()[:16]
        out[split] = {"rows": len(table), "sha256": digest}
    return out


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every tensor of ``model`` (names, dtypes, shapes, values): the same folder with other weights differs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_results(path: Path, identity: dict[str, Any], not_identity: tuple[str, ...] = (),
                 defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored results at ``path`` if their identity matches, a fresh record if there are none.

    Settings named in ``not_identity`` are left out of the comparison even where an older folder stored them;
    a setting an older folder did not store yet is taken at its value in ``defaults``. Other settings than the
    stored ones are a :class:`~peft_neft.errors.UsageError` (a ``ValueError``) naming each difference.
    """
    if not path.is_file():
        return {"format": RESULTS_FORMAT, "identity": identity, "runs": {}}
    stored = read_results(path)
    config = stored["identity"].get("config")
    if isinstance(config, dict):
        added = {k: v for k, v in (defaults or {}).items() if k not in config and k not in not_identity}
        stored["identity"]["config"] = {**added, **{k: v for k, v in config.items() if k not in not_identity}}
    if stored["identity"] != identity:
        def leaves(value: Any, prefix: str = "") -> dict[str, Any]:  # {"config": {"max_steps": 3}} -> config.max_steps
            if not isinstance(value, dict):
                return {prefix: value}
            return {k: v for key, item in value.items() for k, v in leaves(item, f"{prefix}.{key}".lstrip(".")).items()}

        def shown(value: Any) -> str:
            text = "(none)" if value is None else repr(value)
            return text if len(text) <= 60 else text[:57] + "..."

        old, new = leaves(stored["identity"]), leaves(identity)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = "; ".join(f"{k}: stored {shown(old.get(k))}, now {shown(new.get(k))}" for k in diff)
        raise UsageError(
            f"{path.parent} holds results of a different configuration ({detail}). Use a new --out folder, "
            "or rerun with the stored settings to resume."
        )
    return stored


def read_results(path: Path) -> dict[str, Any]:
    """A stored ``results.json``, checked; every problem is one message naming the file and what to do."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist: give a folder that peft-neft compare wrote.")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({err}); restore it from a copy or rerun the comparison.") from None
    if not isinstance(stored, dict) or stored.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a peft-neft comparison results file (no format {RESULTS_FORMAT!r}).")
    missing = [k for k in ("identity", "runs") if not isinstance(stored.get(k), dict)]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it was cut short or edited; restore it from a copy.")
    return stored


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results.json`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1, sort_keys=True))


def outputs_path(out: Path, key: str) -> Path:
    """Where the per-sentence outputs of run ``key`` are written (gzipped JSON lines)."""
    return out / "outputs" / f"{re.sub(r'[^a-z0-9@.-]+', '_', key)}.jsonl.gz"


def write_outputs(path: Path, test: Dataset, hypotheses: list[str]) -> None:
    """One JSON line per test sentence (source, reference, hypothesis), gzipped, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"source": s, "reference": r, "hypothesis": h}, ensure_ascii=False)
             for s, r, h in zip(test["source"], test["target"], hypotheses)]
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


def stored_outputs(path: Path) -> Path:
    """The outputs file on disk for ``path``: itself, or its ``.jsonl``/``.jsonl.gz`` twin (older folders)."""
    if not path.is_file():
        other = path.with_suffix("") if path.name.endswith(".gz") else path.with_name(path.name + ".gz")
        path = other if other.is_file() else path
    return path


def read_outputs(path: Path) -> dict[str, list[str]]:
    """References and hypotheses of a run's outputs; ``.jsonl.gz`` or, for older folders, ``.jsonl``."""
    path = stored_outputs(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
        return {field: [line[field] for line in lines] for field in ("source", "reference", "hypothesis")}
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: restore the folder's outputs/ from a copy, or rerun that run "
                         "(remove its entry from results.json).") from None
    except (OSError, EOFError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {err}); restore it from a copy, or rerun that run "
                         "(remove its entry from results.json).") from None
