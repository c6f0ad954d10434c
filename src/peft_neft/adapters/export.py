"""NeFT <-> LoRA adapter folders: a saved NeFT adapter written as a standard peft LoRA adapter, and back.

The math is :mod:`peft_neft.tuner.conversion` (exact by default, or the best rank-R approximation under
``max_rank``); this module reads and checks the files, as strictly as loading them would, and writes the
result atomically with a model card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import safetensors.torch
import torch
from peft import LoraConfig, PeftModel
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._shapes import meta_model
from ..atomic import atomic_dir
from ..tuner.integrity import save_with_checksums, verify
from ..embedded_model import DEFAULT_MODEL_HUB_ID, hub_id, portable_name, resolve_model_path
from ..outputs import check_output
from ..tuner import NeFTConfig
from ..tuner.config import PEFT_MODEL_PREFIX
from ..tuner.conversion import LoraFactors, lora_to_rows, rows_to_lora
from ..tuner.layer import NeFTLayer
from ..tuner.model import names_of_parameters, refuse_tied_weight
from .model_card import lora_card_section, write_adapter_card, write_model_card

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
_DELTA, _ROWS = ".neft_delta", ".neft_rows"
_BASE = ".base_layer.weight"  # a full weight peft saves beside an adapted lm_head/embedding (save_embedding_layers)
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
    """``adapter_config.json`` as a dict with a ``peft_type``; a one-line error naming the file otherwise."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a peft adapter folder: it has no {CONFIG_NAME}.")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the adapter folder is corrupt. Save the adapter again.") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(config).__name__}; the adapter folder is "
                         "corrupt. Save the adapter again.")
    if not isinstance(config.get("peft_type"), str):
        raise ValueError(f"{path} has no peft_type (found {config.get('peft_type')!r}); it is not a complete peft "
                         "adapter config. Save the adapter again.")
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / SAFETENSORS_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {SAFETENSORS_WEIGHTS_NAME}; save the adapter with save_pretrained(..., "
            "safe_serialization=True) (the default)."
        )
    try:
        tensors = safetensors.torch.load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}): it is truncated or corrupt. "
                         "Save the adapter again.") from err
    verify(path)
    return tensors


def _adapter_folders(root: Path, adapter_name: Optional[str], peft_type: str) -> dict[str, Path]:
    """peft's layout: adapter ``default`` at the root, every other adapter in a subfolder of its name.

    ``adapter_name`` None takes the only adapter; with several, the choice is the caller's (refused, listing them).
    """
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
        if list(found) == ["default"]:
            return found
        where = "only in subfolders" if "default" not in found else "several adapters"
        raise ValueError(f"{root} holds adapters {where} ({', '.join(found)}); pass adapter_name (--adapter NAME) "
                         "for one, or 'all' for every one.")
    if adapter_name not in found:
        raise ValueError(f"{root} has no adapter {adapter_name!r}; it holds: {', '.join(found)}.")
    return {adapter_name: found[adapter_name]}


def _neft_config(folder: Path, config: dict) -> NeFTConfig:
    """The adapter's config validated as loading validates it (zero-row modules, which select nothing, left out)."""
    known = {f.name for f in fields(NeFTConfig)}
    values = {k: v for k, v in config.items() if k in known and k != "peft_type"}
    counts = values.get("neuron_counts")
    if isinstance(counts, dict):
        values["neuron_counts"] = {n: c for n, c in counts.items() if c != 0}
        if not values["neuron_counts"]:
            raise ValueError(f"{folder}: the NeFT adapter selects no rows, so there is nothing to export.")
    try:
        return NeFTConfig(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{folder / CONFIG_NAME} is not a valid NeFT adapter config: {err} Save the adapter again.") from err


def read_neft_adapter(folder: PathLike) -> tuple[NeFTConfig, dict[str, RowUpdate], dict[str, torch.Tensor]]:
    """The config, per-module row updates and full base weights (peft saves those for an adapted lm_head) of a
    saved NeFT adapter, read from its files (no model) and checked as loading checks them: every tensor belongs
    to a declared module, rows are sorted unique integers, deltas are floating point of the declared size."""
    folder = Path(folder)
    raw = _read_config(folder)
    if raw["peft_type"] != "NEFT":
        raise ValueError(f"{folder} is not a NeFT adapter: its {CONFIG_NAME} has peft_type {raw['peft_type']!r}, "
                         "not 'NEFT'.")
    if raw.get("modules_to_save"):
        raise ValueError(f"{folder} also trains modules_to_save={raw['modules_to_save']}; exporting those is not "
                         "supported. Export an adapter without modules_to_save.")
    config = _neft_config(folder, raw)
    tensors = _read_tensors(folder)
    weights = folder / SAFETENSORS_WEIGHTS_NAME
    declared = {f"{PEFT_MODEL_PREFIX}{n}{s}" for n in (raw.get("neuron_counts") or {}) for s in (_DELTA, _ROWS, _BASE)}
    stray = sorted(set(tensors) - declared)
    if stray:
        module = stray[0].removeprefix(PEFT_MODEL_PREFIX).rsplit(".", 1)[0]
        raise ValueError(f"{weights} holds {stray[0]!r}, but {CONFIG_NAME}'s neuron_counts has no entry for module "
                         f"{module!r}: its update would be dropped. The adapter folder mixes files from different "
                         "saves, or its config was edited; save the adapter again.")
    updates: dict[str, RowUpdate] = {}
    for name, count in sorted(config.neuron_counts.items()):
        delta, rows = tensors.get(f"{PEFT_MODEL_PREFIX}{name}{_DELTA}"), tensors.get(f"{PEFT_MODEL_PREFIX}{name}{_ROWS}")
        if delta is None or rows is None:
            raise ValueError(f"{folder}: module {name!r} is in {CONFIG_NAME} but its neft_delta/neft_rows are missing "
                             f"from {SAFETENSORS_WEIGHTS_NAME}; the adapter folder mixes files from different saves.")
        if rows.dtype != torch.int64 or rows.dim() != 1 or delta.dim() != 2 or delta.shape[0] != rows.numel() \
                or rows.numel() != count:
            raise ValueError(f"{folder}: module {name!r} has rows {tuple(rows.shape)} and delta {tuple(delta.shape)}, "
                             f"inconsistent with its neuron count {count}; the adapter is corrupt.")
        if not delta.dtype.is_floating_point:
            raise ValueError(f"{weights}: the NeFT delta of module {name!r} must be floating point, got "
                             f"{str(delta.dtype).removeprefix('torch.')}: the adapter file is corrupt. Save it again.")
        if int(rows.min()) < 0 or (rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all())):
            raise ValueError(f"{folder}: the rows of module {name!r} are not sorted, unique and non-negative; "
                             "the adapter is corrupt.")
        updates[name] = RowUpdate(rows, delta)
    return config, updates, {k: v for k, v in tensors.items() if k.endswith(_BASE)}


# ----------------------------------------------------------------------------- the base model's shapes


def _base_model(base: Union[PathLike, nn.Module, None], config: NeFTConfig) -> nn.Module:
    if base is None:
        base = config.base_model_name_or_path
        if not base:
            raise ValueError("The adapter does not record its base model (base_model_name_or_path is empty); "
                             "pass the base model with --base / base=.")
    if isinstance(base, nn.Module):
        return base.get_base_model() if isinstance(base, PeftModel) else base
    if hub_id(base) == DEFAULT_MODEL_HUB_ID:  # the embedded model's Hub id: its embedded copy, no network
        base = resolve_model_path(base)
    try:
        return meta_model(base)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the base model config at {str(base)!r} ({err}). Pass the base model "
                         "folder or hub id with --base / base=.") from err


def _portable(name: Optional[str]) -> Optional[str]:
    """The base model name an exported adapter records: the Hub id where there is one (:func:`portable_name`)."""
    return portable_name(name) if name else name


def _check_base(updates: dict[str, RowUpdate], model: nn.Module, config: NeFTConfig) -> dict[str, tuple[int, bool]]:
    """``module -> (out_features, is_conv1d)``, after the checks loading the adapter onto ``model`` would make:
    each module exists as a Linear/Conv1D of the recorded shape, with the rows in range and an untied weight."""
    modules = {name: m.get_base_layer() if isinstance(m, NeFTLayer) else m for name, m in model.named_modules()}
    names_of = names_of_parameters(model)
    recorded = config.module_shapes or {}
    shapes = {}
    for name, update in updates.items():
        module = modules.get(name)
        if not isinstance(module, (nn.Linear, Conv1D)):
            found = "no such module" if module is None else f"a {type(module).__name__}"
            raise ValueError(f"The base model has {found} at {name!r}, where the adapter has a Linear update: "
                             "the adapter was trained on another base model. Pass the right one with --base.")
        in_features, out_features = (module.weight.shape if isinstance(module, Conv1D)
                                     else (module.in_features, module.out_features))
        if update.delta.shape[1] != in_features or int(update.rows.max()) >= out_features or \
                (name in recorded and list(recorded[name]) != [out_features, in_features]):
            raise ValueError(f"Module {name!r} of the base model is {in_features} -> {out_features}, but the adapter "
                             f"updates rows up to {int(update.rows.max())} with {update.delta.shape[1]} inputs: the "
                             "adapter was trained on another base model. Pass the right one with --base.")
        refuse_tied_weight(name, module, names_of)
        shapes[name] = (int(out_features), isinstance(module, Conv1D))
    return shapes


# ----------------------------------------------------------------------------- writing

# The output folder is replaced as a whole (never an input, nor around or inside one; a non-empty one needs overwrite).
_OUTPUT_RULE = {"folder": True, "replaced": True, "option": "The output folder"}


def _local_inputs(folders: dict[str, Path], base: Any, configs: list[Optional[str]]) -> dict[Path, str]:
    inputs = {folder: "source adapter" for folder in folders.values()}
    for candidate in [base, *configs]:
        if isinstance(candidate, (str, os.PathLike)) and os.path.exists(candidate):
            inputs.setdefault(Path(candidate), "base model")
    return inputs


def _save_tensors(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    save_with_checksums(tensors, folder / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})


def _suffix_of_another(name: str, modules: list[str]) -> bool:
    return any(other.endswith("." + name) for other in modules)


def _target_modules(names: list[str], modules: list[str]) -> Union[list[str], str]:
    """The adapted names as a list; as an exact regex if peft's list rule (a name or a ``.``-suffix of it)
    would also catch other modules of the base."""
    if not any(_suffix_of_another(n, modules) for n in names):
        return sorted(names)
    return "|".join(re.escape(n) for n in sorted(names))


def _pattern(values: dict[str, int], modules: list[str]) -> dict[str, int]:
    """rank_pattern/alpha_pattern keys. peft matches a key as ``(.*\\.)?KEY$``, so a name that is also the
    ``.``-suffix of another module's name gets ``^`` to match itself only."""
    return {("^" + re.escape(n)) if _suffix_of_another(n, modules) else n: v for n, v in sorted(values.items())}


def _task_type(config: NeFTConfig, model: nn.Module) -> Optional[str]:
    """The NeFT adapter's task type, else CAUSAL_LM for a causal LM base, so AutoPeftModelForCausalLM loads it."""
    if config.task_type:
        return getattr(config.task_type, "value", config.task_type)
    return "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else None


def _export_one(folder: Path, out: Path, base, max_rank: Optional[int], shown_as: Path) -> None:
    config, updates, base_weights = read_neft_adapter(folder)
    model = _base_model(base, config)
    shapes = _check_base(updates, model, config)
    factors: dict[str, LoraFactors] = {
        name: rows_to_lora(update.rows, update.delta, shapes[name][0], max_rank) for name, update in updates.items()
    }
    errors = {name: f.relative_error for name, f in factors.items() if f.rank < updates[name].k}
    for name in sorted(errors):
        logger.warning("%s: module %s selects %d rows; exported as its best rank-%d approximation, relative error "
                       "%.3g", folder, name, updates[name].k, max_rank, errors[name])
    ranks = {name: f.rank for name, f in factors.items()}
    module_names = [name for name, _ in model.named_modules()]
    top = max(ranks.values())
    lora_config = LoraConfig(
        r=top, lora_alpha=top, target_modules=_target_modules(list(updates), module_names),
        rank_pattern=_pattern(ranks, module_names), alpha_pattern=_pattern(ranks, module_names), lora_dropout=0.0,
        bias="none", use_rslora=False, fan_in_fan_out=any(conv for _, conv in shapes.values()),
        base_model_name_or_path=_portable(config.base_model_name_or_path), task_type=_task_type(config, model),
        revision=config.revision, inference_mode=True,
    )
    tensors = dict(base_weights)  # plain peft loads them into the LoRA layer's base layer as it does for NeFT
    for name, f in factors.items():
        tensors[f"{PEFT_MODEL_PREFIX}{name}{_LORA_A}"] = f.lora_A
        tensors[f"{PEFT_MODEL_PREFIX}{name}{_LORA_B}"] = f.lora_B
    out.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(out)
    _save_tensors(tensors, out)
    section = lora_card_section(folder.name, config.base_model_name_or_path, config.neuron_counts,
                                config.module_shapes or {}, ranks, errors, config.selection_provenance)
    write_model_card(out, section, config.base_model_name_or_path, tags=("lora", "neft", "peft-neft"),
                     pipeline_tag="text-generation" if lora_config.task_type == "CAUSAL_LM" else None)
    logger.info("Exported NeFT adapter %s as a LoRA of %d modules (ranks up to %d) to %s", folder, len(updates), top,
                shown_as)


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
        out_dir: The LoRA adapter folder to create; written atomically. It may not be, contain or lie inside
            the adapter or base model folder.
        base: The base model (folder, hub id, or a model instance), read for each module's output size and
            layer type (Conv1D needs ``fan_in_fan_out``). Only its config is read, on the meta device.
            Default: the adapter's ``base_model_name_or_path``.
        adapter_name: ``None`` for the folder's only adapter, a name for one adapter of a multi-adapter folder
            (written at ``out_dir``'s root), or ``"all"`` for every adapter in peft's layout.
        max_rank: The largest LoRA rank to write. A module with more selected rows gets the best rank-``max_rank``
            approximation of its update (truncated SVD) instead of the exact one-hot form; each such module's
            relative error is logged and listed in the card. Default: exact (rank = rows per module).
        overwrite: Replace a non-empty ``out_dir``.
    """
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise ValueError(f"max_rank must be a positive int, got {max_rank!r}.")
    source, out_dir = Path(adapter_dir), Path(out_dir)
    folders = _adapter_folders(source, adapter_name, "NEFT")
    recorded = [_read_config(folder).get("base_model_name_or_path") for folder in folders.values()] if base is None else []
    check_output(out_dir, _local_inputs(folders, base, recorded), **_OUTPUT_RULE, overwrite=overwrite)
    with atomic_dir(out_dir) as tmp:
        for name, folder in folders.items():
            sub = adapter_name == "all" and name != "default"
            _export_one(folder, tmp / name if sub else tmp, base, max_rank, out_dir / name if sub else out_dir)
    return out_dir


# ----------------------------------------------------------------------------- import


def _lora_number(folder: Path, key: str, value: Any, integer: bool) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"{folder / CONFIG_NAME}: {key} must be a positive {'int' if integer else 'number'}, got "
                         f"{value!r}; the adapter config is corrupt. Save the adapter again.")
    return value


def _lora_updates(folder: Path, config: dict) -> dict[str, RowUpdate]:
    from peft.utils.other import get_pattern_key

    used = [option for option in _UNSUPPORTED_LORA if config.get(option)]
    if used:
        raise ValueError(f"{folder} uses LoRA options {used}, which are not a plain B @ A update; only plain LoRA "
                         "adapters can be imported into NeFT.")
    patterns = {key: config.get(key) or {} for key in ("rank_pattern", "alpha_pattern")}
    for key, pattern in patterns.items():
        if not isinstance(pattern, dict):
            raise ValueError(f"{folder / CONFIG_NAME}: {key} must be a JSON object, got a {type(pattern).__name__}; "
                             "the adapter config is corrupt. Save the adapter again.")
    tensors = _read_tensors(folder)
    names = sorted(k[len(PEFT_MODEL_PREFIX):-len(_LORA_A)] for k in tensors
                   if k.startswith(PEFT_MODEL_PREFIX) and k.endswith(_LORA_A))
    other = set(tensors) - {f"{PEFT_MODEL_PREFIX}{n}{s}" for n in names for s in (_LORA_A, _LORA_B)}
    if other:
        raise ValueError(f"{folder} holds tensors that are not Linear lora_A/lora_B weights, e.g. {sorted(other)[:3]}; "
                         "only plain Linear LoRA adapters can be imported into NeFT.")
    updates = {}
    for name in names:
        lora_a, lora_b = tensors[f"{PEFT_MODEL_PREFIX}{name}{_LORA_A}"], tensors[f"{PEFT_MODEL_PREFIX}{name}{_LORA_B}"]
        rank_key = get_pattern_key(patterns["rank_pattern"].keys(), name)
        alpha_key = get_pattern_key(patterns["alpha_pattern"].keys(), name)
        r = _lora_number(folder, "r", patterns["rank_pattern"].get(rank_key, config.get("r")), True)
        alpha = _lora_number(folder, "lora_alpha",
                             patterns["alpha_pattern"].get(alpha_key, config.get("lora_alpha")), False)
        if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[0] != r or lora_b.shape[1] != r:
            raise ValueError(f"{folder}: module {name!r} has lora_A {tuple(lora_a.shape)} and lora_B "
                             f"{tuple(lora_b.shape)}, not rank {r} as its config says; the adapter is corrupt.")
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        try:
            found = lora_to_rows(lora_a, lora_b, scaling)
        except ValueError as err:
            raise ValueError(f"{folder} is not row-sparse: {err} (module {name!r}). Only a LoRA whose B has at most "
                             "one non-zero per column imports exactly into NeFT.") from err
        if found is not None:
            updates[name] = RowUpdate(*found)
    return updates


def _import_one(source: Path, out: Path, shown_as: Path) -> None:
    config = _read_config(source)
    if config["peft_type"] != "LORA":
        raise ValueError(f"{source} is not a LoRA adapter: its {CONFIG_NAME} has peft_type {config['peft_type']!r}.")
    updates = _lora_updates(source, config)
    if not updates:
        raise ValueError(f"{source}: every lora_B is zero, so the adapter changes nothing and there is nothing to import.")
    dtypes = {u.delta.dtype for u in updates.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _DTYPE_NAMES:
        raise ValueError(f"{source}: lora_A tensors have dtypes {sorted(map(str, dtypes))}; NeFT needs one float dtype.")
    neft_config = NeFTConfig(
        neurons={n: u.rows for n, u in updates.items()}, delta_dtype=_DTYPE_NAMES[next(iter(dtypes))],
        base_model_name_or_path=_portable(config.get("base_model_name_or_path")), revision=config.get("revision"),
        task_type=config.get("task_type"), inference_mode=True,
    )
    tensors = {}
    for name, update in updates.items():
        tensors[f"{PEFT_MODEL_PREFIX}{name}{_DELTA}"] = update.delta
        tensors[f"{PEFT_MODEL_PREFIX}{name}{_ROWS}"] = update.rows
    out.mkdir(parents=True, exist_ok=True)
    neft_config.save_pretrained(out)
    _save_tensors(tensors, out)
    write_adapter_card(out, {"default": neft_config})
    logger.info("Imported row-sparse LoRA %s as a NeFT adapter of %d modules to %s", source, len(updates), shown_as)


def import_lora(lora_dir: PathLike, out_dir: PathLike, *, adapter_name: Optional[str] = None,
                overwrite: bool = False) -> Path:
    """Write a row-sparse LoRA adapter (every column of ``lora_B`` has at most one non-zero) as a NeFT adapter.

    Column j of ``B`` with value ``b`` in row ``i`` becomes ``scaling * b * A[j]`` in NeFT row ``i`` (columns
    pointing at the same row are summed). A LoRA exported by :func:`export_lora` comes back bit for bit.
    Any other LoRA is refused: its update is not row-sparse.

    Args:
        lora_dir: The LoRA adapter folder.
        out_dir: The NeFT adapter folder to create; written atomically, never the input or a folder around it.
        adapter_name: ``None`` for the folder's only adapter, a name for one adapter of a multi-adapter folder,
            or ``"all"`` for every adapter in peft's layout.
        overwrite: Replace a non-empty ``out_dir``.
    """
    source, out_dir = Path(lora_dir), Path(out_dir)
    folders = _adapter_folders(source, adapter_name, "LORA")
    check_output(out_dir, _local_inputs(folders, None, []), **_OUTPUT_RULE, overwrite=overwrite)
    with atomic_dir(out_dir) as tmp:
        for name, folder in folders.items():
            sub = adapter_name == "all" and name != "default"
            _import_one(folder, tmp / name if sub else tmp, out_dir / name if sub else out_dir)
    return out_dir
