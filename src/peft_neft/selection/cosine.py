"""Cosine scores (the paper's Eq. 1) between an original and a fine-tuned model, in memory or streamed from disk."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from .._shapes import count_params, meta_model, module_shape, weight_rows
from .._targets import (
    DEFAULT_TARGET_MODULES,
    TargetModules,
    check_targets_found,
    find_target_modules,
    is_row_module,
    matches,
    row_module_names,
)
from ..tuner.fingerprint import fingerprint_of, model_fingerprint
from .neuron_scores import NeuronScores

_CHUNK_ELEMENTS = 1 << 22
logger = logging.getLogger(__name__)


def _row_chunks(original: torch.Tensor, finetuned: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The two weights' rows in float64, a bounded chunk at a time (the shapes must agree)."""
    if original.shape != finetuned.shape:
        raise ValueError(f"Cannot compare rows of shapes {tuple(original.shape)} and {tuple(finetuned.shape)}.")
    step = max(1, _CHUNK_ELEMENTS // max(1, original.shape[1]))
    for start in range(0, original.shape[0], step):
        a = original[start:start + step].detach().to(torch.float64)
        yield a, finetuned[start:start + step].detach().to(device=a.device, dtype=torch.float64)


def cosine_rows(original: torch.Tensor, finetuned: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row pair, in float64, never NaN.

    Identical rows (including two zero rows) score exactly 1; a zero row against a non-zero one
    scores 0 (its direction changed completely).
    """
    out = []
    for a, b in _row_chunks(original, finetuned):
        norms = a.norm(dim=1) * b.norm(dim=1)
        cos = (a * b).sum(dim=1) / norms.clamp_min(torch.finfo(torch.float64).tiny)
        cos = torch.where(norms > 0, cos.clamp(-1.0, 1.0), torch.zeros_like(cos))
        out.append(torch.where((a == b).all(dim=1), torch.ones_like(cos), cos).cpu())
    return torch.cat(out)


def movement_rows(original: torch.Tensor, finetuned: torch.Tensor) -> torch.Tensor:
    """Minus the Euclidean norm of each row's change, ``-||W_K[i] - W_0[i]||``, in float64.

    Movement (Sanh et al., 2020, "Movement Pruning", cited by the paper as movement-based sparse fine-tuning)
    ranks weights by how far fine-tuning moves them; here per row. Negated so that lower = selected first:
    the rows that moved most come first.
    """
    return torch.cat([-(b - a).norm(dim=1).cpu() for a, b in _row_chunks(original, finetuned)])


# Scores made by comparing each row before and after a fine-tune (lower = selected first); the calibration
# callback computes them all from one run.
ROW_CHANGES = {"cosine": cosine_rows, "movement": movement_rows}


def score_models(
    original: nn.Module, finetuned: nn.Module, target_modules: TargetModules = DEFAULT_TARGET_MODULES
) -> NeuronScores:
    """Score every output neuron of the target modules by the cosine similarity of its row (Conv1D: column)."""
    orig_modules = find_target_modules(original, target_modules)
    ft_modules = dict(finetuned.named_modules())
    scores, in_features = {}, {}
    for name, module in orig_modules.items():
        other = ft_modules.get(name)
        if other is None or not is_row_module(other):
            raise ValueError(f"The fine-tuned model has no Linear module {name!r}: the two models differ in structure.")
        if module_shape(other) != module_shape(module):
            raise ValueError(
                f"Module {name!r} has shape {module_shape(module)} in the original and {module_shape(other)} in the "
                "fine-tuned model (as (out, in)): they are not the same base model."
            )
        scores[name] = cosine_rows(weight_rows(module), weight_rows(other))
        in_features[name] = module_shape(module)[1]
    return NeuronScores(
        scores=scores,
        in_features=in_features,
        total_params=count_params(original),
        method="cosine",
        metadata={"fingerprint": model_fingerprint(original), "source": "models"},
    )


def _safetensors_files(path: str | os.PathLike) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"No safetensors checkpoint in {os.fspath(path)!r}: expected model.safetensors, a sharded "
            "model.safetensors.index.json, or a .safetensors file. Save models with save_pretrained()."
        )
    return files


class _Checkpoint:
    """Read-only view of a (possibly sharded) safetensors checkpoint: key -> lazily loaded tensor."""

    def __init__(self, path: str | os.PathLike, stack: ExitStack) -> None:
        self.where: dict[str, object] = {}
        for file in _safetensors_files(path):
            try:
                handle = stack.enter_context(safe_open(os.fspath(file), framework="pt"))
            except (SafetensorError, OSError) as err:
                raise ValueError(
                    f"{os.fspath(file)!r} is not a readable safetensors file ({err}): it is truncated or corrupt. "
                    "Save the model again with save_pretrained()."
                ) from err
            for key in handle.keys():
                self.where[key] = handle

    def shape(self, key: str) -> list[int]:
        return list(self.where[key].get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self.where[key].get_tensor(key)

    def keys(self) -> Iterator[str]:
        return iter(self.where)


def score_checkpoints(
    base_dir: str | os.PathLike,
    finetuned_dir: str | os.PathLike,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    progress: bool | None = None,
) -> NeuronScores:
    """Like :func:`score_models`, but streamed tensor by tensor from two safetensors checkpoints.

    Peak memory is about one pair of weight tensors, so it works for models larger than RAM.
    When ``base_dir`` has a ``config.json`` the model is built on the meta device to tell Conv1D
    (scored per column) from Linear layers; without one every 2-D ``*.weight`` is taken as a Linear.
    ``progress`` shows a bar over the weight matrices (None: only on a terminal).
    """
    base_path = Path(base_dir)
    model_dir = base_path if base_path.is_dir() else base_path.parent
    modules = dict(meta_model(model_dir).named_modules()) if (model_dir / "config.json").is_file() else None
    with ExitStack() as stack:
        base, tuned = _Checkpoint(base_dir, stack), _Checkpoint(finetuned_dir, stack)
        shapes = {key: base.shape(key) for key in base.keys()}
        total = sum(int(torch.Size(s).numel()) for s in shapes.values())
        candidates = {
            key[: -len(".weight")]: key
            for key, shape in shapes.items()
            if key.endswith(".weight") and len(shape) == 2 and matches(target_modules, key[: -len(".weight")])
        }
        if modules is not None:
            candidates = {n: k for n, k in candidates.items() if is_row_module(modules.get(n))}
            available = row_module_names(modules.items())
        else:
            available = sorted({k[: -len(".weight")].rsplit(".", 1)[-1] for k, s in shapes.items() if len(s) == 2})
        check_targets_found(target_modules, candidates, available)
        scores, in_features = {}, {}
        disable = None if progress is None else not progress  # tqdm: None disables it off a terminal
        for name, key in tqdm(candidates.items(), desc="scoring", unit="matrix", disable=disable):
            if key not in tuned.where:
                raise ValueError(f"The fine-tuned checkpoint has no tensor {key!r}: the two checkpoints differ in structure.")
            if tuned.shape(key) != shapes[key]:
                raise ValueError(
                    f"Tensor {key!r} has shape {shapes[key]} in the base and {tuned.shape(key)} in the fine-tuned "
                    "checkpoint: they are not the same base model."
                )
            a, b = base.get(key), tuned.get(key)
            if modules is not None and isinstance(modules[name], Conv1D):
                a, b = a.T, b.T
            scores[name] = cosine_rows(a, b)
            in_features[name] = int(a.shape[1])
            del a, b
    logger.info("Scored %d neurons in %d weight matrices of %s against %s.", sum(len(s) for s in scores.values()),
                len(scores), os.fspath(base_dir), os.fspath(finetuned_dir))
    return NeuronScores(
        scores=scores,
        in_features=in_features,
        total_params=total,
        method="cosine",
        metadata={"fingerprint": fingerprint_of(shapes.items()), "source": "checkpoints"},
    )
