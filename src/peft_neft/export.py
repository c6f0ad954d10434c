"""NeFT <-> LoRA: a NeFT adapter written as an exact, standard peft LoRA adapter, and back.

A NeFT module with selected rows ``R`` (k of them) and delta ``D`` (k x in) adds ``delta_W = S @ D``
to its weight, where ``S`` is the (out x k) one-hot matrix with ``S[R[j], j] = 1``. That is a LoRA of
rank k with ``lora_A = D``, ``lora_B = S`` and ``lora_alpha = k`` (scaling ``alpha / r = 1``). Every
output of ``B @ (A @ x)`` is one product by 1.0 plus zeros, so the LoRA model computes the NeFT update
up to the rounding of the base GEMM; see ``docs/layer.md`` ("Export to LoRA").

The reverse exists when every column of a LoRA's ``B`` has at most one non-zero entry: column j with
value ``b`` in row ``i`` adds ``scaling * b * A[j]`` to row ``i`` only, a row-sparse update.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import safetensors.torch
import torch
from peft import PeftModel
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from torch import nn
from transformers.pytorch_utils import Conv1D

from ._shapes import meta_model
from .atomic import atomic_dir
from .tuner import NeFTConfig
from .tuner.layer import NeFTLayer

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
_PREFIX = "base_model.model."
_DELTA, _ROWS = ".neft_delta", ".neft_rows"
_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
# LoRA options that change what the adapter computes beyond ``scaling * B @ A``; import refuses them.
_UNSUPPORTED_LORA = ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices", "target_parameters",
                     "layer_replication", "use_bdlora", "use_qalora", "alora_invocation_tokens")


@dataclass
class RowUpdate:
    """One module's row-sparse update: ``delta_W[rows] += delta`` (``delta`` is k x in)."""

    rows: torch.Tensor
    delta: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.rows.numel())


# ----------------------------------------------------------------------------- reading adapters


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a peft adapter folder: it has no {CONFIG_NAME}.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the adapter folder is corrupt.") from err


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / SAFETENSORS_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {SAFETENSORS_WEIGHTS_NAME}; save the adapter with save_pretrained(..., "
            "safe_serialization=True) (the default)."
        )
    return safetensors.torch.load_file(path)


def _adapter_folders(root: Path, adapter_name: Optional[str], peft_type: str) -> dict[str, Path]:
    """peft's layout: adapter ``default`` at the root, every other adapter in a subfolder of its name."""
    def is_adapter(folder: Path) -> bool:
        try:
            return _read_config(folder).get("peft_type") == peft_type
        except (FileNotFoundError, ValueError):
            return False

    if not root.is_dir():
        raise FileNotFoundError(f"Adapter folder {root} does not exist.")
    found = {"default": root} if (root / CONFIG_NAME).is_file() else {}
    found.update({sub.name: sub for sub in sorted(root.iterdir()) if sub.is_dir() and is_adapter(sub)})
    if not found:
        raise ValueError(f"{root} is not a {peft_type} adapter folder: no {CONFIG_NAME} in it or its subfolders.")
    if adapter_name == "all":
        return found
    if adapter_name is None:
        if "default" in found:
            return {"default": root}
        raise ValueError(f"{root} holds adapters only in subfolders ({', '.join(found)}); pass adapter_name "
                         "(--adapter NAME) or 'all'.")
    if adapter_name not in found:
        raise ValueError(f"{root} has no adapter {adapter_name!r}; it holds: {', '.join(found)}.")
    return {adapter_name: found[adapter_name]}


def read_neft_adapter(folder: PathLike) -> tuple[dict, dict[str, RowUpdate]]:
    """The config and per-module row updates of a saved NeFT adapter, read from its files (no model)."""
    folder = Path(folder)
    config = _read_config(folder)
    if config.get("peft_type") != "NEFT":
        raise ValueError(f"{folder} is not a NeFT adapter: its {CONFIG_NAME} has peft_type "
                         f"{config.get('peft_type')!r}, not 'NEFT'.")
    if config.get("modules_to_save"):
        raise ValueError(f"{folder} also trains modules_to_save={config['modules_to_save']}; exporting those is not "
                         "supported. Export an adapter without modules_to_save.")
    tensors = _read_tensors(folder)
    updates: dict[str, RowUpdate] = {}
    for name, count in sorted((config.get("neuron_counts") or {}).items()):
        delta, rows = tensors.get(f"{_PREFIX}{name}{_DELTA}"), tensors.get(f"{_PREFIX}{name}{_ROWS}")
        if delta is None or rows is None:
            raise ValueError(f"{folder}: module {name!r} is in {CONFIG_NAME} but its neft_delta/neft_rows are missing "
                             f"from {SAFETENSORS_WEIGHTS_NAME}; the adapter folder mixes files from different saves.")
        if rows.dtype != torch.int64 or rows.dim() != 1 or delta.dim() != 2 or delta.shape[0] != rows.numel() \
                or rows.numel() != count:
            raise ValueError(f"{folder}: module {name!r} has rows {tuple(rows.shape)} and delta {tuple(delta.shape)}, "
                             f"inconsistent with its neuron count {count}; the adapter is corrupt.")
        if rows.numel() == 0:
            continue
        if int(rows.min()) < 0 or (rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all())):
            raise ValueError(f"{folder}: the rows of module {name!r} are not sorted, unique and non-negative; "
                             "the adapter is corrupt.")
        updates[name] = RowUpdate(rows, delta)
    if not updates:
        raise ValueError(f"{folder}: the NeFT adapter selects no rows, so there is nothing to export.")
    return config, updates


# ----------------------------------------------------------------------------- the base model's shapes


def _meta_model(base: PathLike) -> nn.Module:
    """The base model's architecture on the meta device: shapes and layer types, no weights."""
    try:
        return meta_model(base)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the base model config at {str(base)!r} ({err}). Pass the base model "
                         "folder or hub id with --base / base=.") from err


def _base_modules(base: Union[PathLike, nn.Module, None], config: dict) -> dict[str, nn.Module]:
    if base is None:
        base = config.get("base_model_name_or_path")
        if not base:
            raise ValueError("The adapter does not record its base model (base_model_name_or_path is empty); "
                             "pass the base model with --base / base=.")
    model = base if isinstance(base, nn.Module) else _meta_model(base)
    if isinstance(model, PeftModel):
        model = model.get_base_model()

    return {name: m.get_base_layer() if isinstance(m, NeFTLayer) else m for name, m in model.named_modules()}


def _check_shapes(updates: dict[str, RowUpdate], modules: dict[str, nn.Module]) -> dict[str, tuple[int, bool]]:
    """``module -> (out_features, is_conv1d)``, after checking every update fits the base."""
    shapes = {}
    for name, update in updates.items():
        module = modules.get(name)
        if not isinstance(module, (nn.Linear, Conv1D)):
            found = "no such module" if module is None else f"a {type(module).__name__}"
            raise ValueError(f"The base model has {found} at {name!r}, where the adapter has a Linear update: "
                             "the adapter was trained on another base model. Pass the right one with --base.")
        in_features, out_features = (module.weight.shape if isinstance(module, Conv1D)
                                     else (module.in_features, module.out_features))
        if update.delta.shape[1] != in_features or int(update.rows.max()) >= out_features:
            raise ValueError(f"Module {name!r} of the base model is {in_features} -> {out_features}, but the adapter "
                             f"updates rows up to {int(update.rows.max())} with {update.delta.shape[1]} inputs: the "
                             "adapter was trained on another base model. Pass the right one with --base.")
        shapes[name] = (int(out_features), isinstance(module, Conv1D))
    return shapes


# ----------------------------------------------------------------------------- writing


def _prepare_target(out_dir: Path, sources: list[Path], overwrite: bool) -> None:
    resolved = out_dir.resolve()
    for source in sources:
        if resolved == source.resolve() or resolved in source.resolve().parents:
            raise ValueError(f"The output folder {out_dir} holds the source adapter {source}; choose another folder.")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"The output path {out_dir} is a file; choose a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        held = "another adapter" if (out_dir / CONFIG_NAME).is_file() else "files"
        raise ValueError(f"The output folder {out_dir} already holds {held}; pass --overwrite (overwrite=True) "
                         "to replace its contents, or choose an empty folder.")


def _save_tensors(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, folder / SAFETENSORS_WEIGHTS_NAME,
                                metadata={"format": "pt"})


def _suffix_of_another(name: str, modules: dict[str, nn.Module]) -> bool:
    return any(other.endswith("." + name) for other in modules)


def _target_modules(names: list[str], modules: dict[str, nn.Module]) -> Union[list[str], str]:
    """The adapted names as a list; as an exact regex if peft's list rule (a name or a ``.``-suffix of it)
    would also catch other modules of the base."""
    if not any(_suffix_of_another(n, modules) for n in names):
        return sorted(names)
    return "|".join(re.escape(n) for n in sorted(names))


def _pattern(values: dict[str, int], modules: dict[str, nn.Module]) -> dict[str, int]:
    """rank_pattern/alpha_pattern keys. peft matches a key as ``(.*\\.)?KEY$``, so a name that is also the
    ``.``-suffix of another module's name gets ``^`` to match itself only."""
    return {("^" + re.escape(n)) if _suffix_of_another(n, modules) else n: v for n, v in sorted(values.items())}


def _model_card(source: Path, config: dict, updates: dict[str, RowUpdate], out_sizes: dict[str, int]) -> str:
    ks = sorted(u.k for u in updates.values())
    params = sum(u.delta.numel() for u in updates.values())
    lora_params = sum(u.delta.numel() + out_sizes[n] * u.k for n, u in updates.items())
    base = config.get("base_model_name_or_path")
    lines = [
        "---", "library_name: peft", *([f"base_model: {base}"] if base else []), "tags: [lora, neft, peft-neft]", "---", "",
        "# LoRA adapter exported from NeFT", "",
        f"Exported by `peft-neft export-lora` from the NeFT (neuron-level fine-tuning) adapter `{source.name}`. "
        "Each adapted module's update `delta_W = S @ D` (selected rows `R`, row deltas `D`) is written as a LoRA of "
        "rank k = len(R) with `lora_A = D`, `lora_B` the one-hot matrix `S` and `lora_alpha = k` (scaling 1), so "
        "plain `peft.PeftModel.from_pretrained(base, this_folder)` computes the NeFT model's outputs without "
        "`peft-neft` installed.", "",
        "## Selection", "",
        f"- modules: {len(updates)}",
        f"- selected rows: {sum(ks)} (per module: min {ks[0]}, median {ks[len(ks) // 2]}, max {ks[-1]})",
        f"- trained parameters (NeFT deltas): {params:,}",
        f"- LoRA parameters in this file (A and one-hot B): {lora_params:,}",
        f"- LoRA rank = rows per module; the largest is {ks[-1]} (a server's max LoRA rank must be at least this)", "",
        "| module | rows (rank) | in | out |", "|---|---|---|---|",
    ]
    lines += [f"| {n} | {u.k} | {u.delta.shape[1]} | {out_sizes[n]} |" for n, u in updates.items()]
    return "\n".join(lines) + "\n"


def _export_one(folder: Path, out: Path, base, max_rank: Optional[int]) -> None:
    from peft import LoraConfig

    config, updates = read_neft_adapter(folder)
    modules = _base_modules(base, config)
    shapes = _check_shapes(updates, modules)
    if max_rank is not None:
        over = {n: u.k for n, u in updates.items() if u.k > max_rank}
        if over:
            listed = ", ".join(f"{n} (k={k})" for n, k in sorted(over.items(), key=lambda item: -item[1]))
            raise ValueError(
                f"{len(over)} module(s) of {folder} select more than --max-rank {max_rank} rows: {listed}. One peft "
                "LoRA adapter has one A/B pair per module, so the rank cannot be split exactly; raise the server's "
                "max LoRA rank or select fewer rows per module."
            )
    ranks = {n: u.k for n, u in updates.items()}
    top = max(ranks.values())
    lora_config = LoraConfig(
        r=top, lora_alpha=top, target_modules=_target_modules(list(updates), modules),
        rank_pattern=_pattern(ranks, modules), alpha_pattern=_pattern(ranks, modules), lora_dropout=0.0, bias="none",
        use_rslora=False, fan_in_fan_out=any(conv for _, conv in shapes.values()),
        base_model_name_or_path=config.get("base_model_name_or_path"), task_type=config.get("task_type"),
        revision=config.get("revision"), inference_mode=True,
    )
    tensors = {}
    for name, update in updates.items():
        one_hot = torch.zeros(shapes[name][0], update.k, dtype=update.delta.dtype)
        one_hot[update.rows, torch.arange(update.k)] = 1
        tensors[f"{_PREFIX}{name}{_LORA_A}"] = update.delta
        tensors[f"{_PREFIX}{name}{_LORA_B}"] = one_hot
    out.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(out)
    _save_tensors(tensors, out)
    (out / "README.md").write_text(_model_card(folder, config, updates, {n: s[0] for n, s in shapes.items()}))
    logger.info("Exported NeFT adapter %s as a LoRA of %d modules (ranks up to %d) to %s", folder, len(updates), top, out)


def export_lora(
    adapter_dir: PathLike,
    out_dir: PathLike,
    *,
    base: Union[PathLike, nn.Module, None] = None,
    adapter_name: Optional[str] = None,
    max_rank: Optional[int] = None,
    overwrite: bool = False,
) -> Path:
    """Write a saved NeFT adapter as a standard peft LoRA adapter that computes the same outputs.

    Args:
        adapter_dir: The NeFT adapter folder (``save_pretrained`` output).
        out_dir: The LoRA adapter folder to create; written atomically.
        base: The base model (folder, hub id, or a model instance), read for each module's output size and
            layer type (Conv1D needs ``fan_in_fan_out``). Only its config is read, on the meta device.
            Default: the adapter's ``base_model_name_or_path``.
        adapter_name: ``None`` for the adapter at the folder root, a name for one adapter of a multi-adapter
            folder (written at ``out_dir``'s root), or ``"all"`` for every adapter in peft's layout.
        max_rank: Refuse the export if a module selects more rows (= LoRA rank) than this.
        overwrite: Replace a non-empty ``out_dir``.
    """
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank must be a positive int, got {max_rank}.")
    source, out_dir = Path(adapter_dir), Path(out_dir)
    folders = _adapter_folders(source, adapter_name, "NEFT")
    _prepare_target(out_dir, list(folders.values()), overwrite)
    with atomic_dir(out_dir) as tmp:
        for name, folder in folders.items():
            keep_layout = adapter_name == "all" and name != "default"
            _export_one(folder, tmp / name if keep_layout else tmp, base, max_rank)
    return out_dir


# ----------------------------------------------------------------------------- import


def _lora_updates(folder: Path, config: dict) -> dict[str, RowUpdate]:
    from peft.utils.other import get_pattern_key

    used = [option for option in _UNSUPPORTED_LORA if config.get(option)]
    if used:
        raise ValueError(f"{folder} uses LoRA options {used}, which are not a plain B @ A update; only plain LoRA "
                         "adapters can be imported into NeFT.")
    tensors = _read_tensors(folder)
    names = sorted(k[len(_PREFIX):-len(_LORA_A)] for k in tensors if k.startswith(_PREFIX) and k.endswith(_LORA_A))
    other = set(tensors) - {f"{_PREFIX}{n}{s}" for n in names for s in (_LORA_A, _LORA_B)}
    if other:
        raise ValueError(f"{folder} holds tensors that are not Linear lora_A/lora_B weights, e.g. {sorted(other)[:3]}; "
                         "only plain Linear LoRA adapters can be imported into NeFT.")
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    updates = {}
    for name in names:
        lora_a, lora_b = tensors[f"{_PREFIX}{name}{_LORA_A}"], tensors[f"{_PREFIX}{name}{_LORA_B}"]
        r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), name), config["r"])
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), name), config["lora_alpha"])
        if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[0] != r or lora_b.shape[1] != r:
            raise ValueError(f"{folder}: module {name!r} has lora_A {tuple(lora_a.shape)} and lora_B "
                             f"{tuple(lora_b.shape)}, not rank {r} as its config says; the adapter is corrupt.")
        nonzero = lora_b != 0
        per_column = nonzero.sum(0)
        if bool((per_column > 1).any()):
            column = int(torch.nonzero(per_column > 1)[0])
            raise ValueError(f"{folder} is not row-sparse: column {column} of lora_B of module {name!r} has "
                             f"{int(per_column[column])} non-zero entries, so its update touches several rows at "
                             "once. Only a LoRA whose B has at most one non-zero per column imports exactly into NeFT.")
        columns = torch.nonzero(per_column == 1).flatten()
        if columns.numel() == 0:
            continue
        targets = nonzero[:, columns].float().argmax(0)
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        scaled = lora_a[columns].double() * (lora_b[targets, columns].double() * scaling)[:, None]
        rows, inverse = torch.unique(targets, sorted=True, return_inverse=True)
        delta = torch.zeros(rows.numel(), lora_a.shape[1], dtype=torch.float64).index_add_(0, inverse, scaled)
        updates[name] = RowUpdate(rows, delta.to(lora_a.dtype))
    return updates


def import_lora(lora_dir: PathLike, out_dir: PathLike, *, overwrite: bool = False) -> Path:
    """Write a row-sparse LoRA adapter (every column of ``lora_B`` has at most one non-zero) as a NeFT adapter.

    Column j of ``B`` with value ``b`` in row ``i`` becomes ``scaling * b * A[j]`` in NeFT row ``i`` (columns
    pointing at the same row are summed). A LoRA exported by :func:`export_lora` comes back bit for bit.
    Any other LoRA is refused: its update is not row-sparse.
    """
    source, out_dir = Path(lora_dir), Path(out_dir)
    config = _read_config(source)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{source} is not a LoRA adapter: its {CONFIG_NAME} has peft_type {config.get('peft_type')!r}.")
    updates = _lora_updates(source, config)
    if not updates:
        raise ValueError(f"{source}: every lora_B is zero, so the adapter changes nothing and there is nothing to import.")
    dtypes = {u.delta.dtype for u in updates.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _DTYPE_NAMES:
        raise ValueError(f"{source}: lora_A tensors have dtypes {sorted(map(str, dtypes))}; NeFT needs one float dtype.")
    _prepare_target(out_dir, [source], overwrite)
    neft_config = NeFTConfig(
        neurons={n: u.rows for n, u in updates.items()}, delta_dtype=_DTYPE_NAMES[next(iter(dtypes))],
        base_model_name_or_path=config.get("base_model_name_or_path"), revision=config.get("revision"),
        task_type=config.get("task_type"), inference_mode=True,
    )
    tensors = {}
    for name, update in updates.items():
        tensors[f"{_PREFIX}{name}{_DELTA}"] = update.delta
        tensors[f"{_PREFIX}{name}{_ROWS}"] = update.rows
    with atomic_dir(out_dir) as tmp:
        neft_config.save_pretrained(tmp)
        _save_tensors(tensors, tmp)
    logger.info("Imported row-sparse LoRA %s as a NeFT adapter of %d modules to %s", source, len(updates), out_dir)
    return out_dir
