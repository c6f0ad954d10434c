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
from typing import Any

from datasets import Dataset

from ..atomic import atomic_path

RESULTS_FORMAT = "peft-neft-compare/1"


def run_key(spec: str, seed: int) -> str:
    """The key of one run in ``results["runs"]``: ``"lora:8@seed0"``."""
    return f"{spec}@seed{seed}"


def data_fingerprint(data: dict[str, Dataset]) -> dict[str, Any]:
    """Row count and a content hash of each split, so a folder never mixes two data sets."""
    out = {}
    for split, table in data.items():
        digest = hashlib.sha256(json.dumps([list(table["source"]), list(table["target"])]).encode()).hexdigest()[:16]
        out[split] = {"rows": len(table), "sha256": digest}
    return out


def load_results(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The stored results at ``path`` if their identity matches, a fresh record if there are none."""
    if not path.is_file():
        return {"format": RESULTS_FORMAT, "identity": identity, "runs": {}}
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it or choose another --out folder.") from None
    if not isinstance(stored, dict) or stored.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a peft-neft comparison results file; choose another --out folder.")
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
        raise ValueError(
            f"{path.parent} holds results of a different configuration ({detail}). Use a new --out folder, "
            "or rerun with the stored settings to resume."
        )
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


def read_outputs(path: Path) -> dict[str, list[str]]:
    """References and hypotheses of a run's outputs; ``.jsonl.gz`` or, for older folders, ``.jsonl``."""
    if not path.is_file():
        other = path.with_suffix("") if path.name.endswith(".gz") else path.with_name(path.name + ".gz")
        path = other if other.is_file() else path
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    return {field: [line[field] for line in lines] for field in ("source", "reference", "hypothesis")}
