"""``NeFTConfig``: which output neurons (rows) of which Linear layers are trained."""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, PeftType
from safetensors import SafetensorError, safe_open

from .hooks import SAVE_HOOKS
from .integrity import verify

_DELTA_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
PEFT_MODEL_PREFIX = "base_model.model."
"""The prefix peft puts before a base model's module names; NeFT's names are relative to the base model."""
PEFT_TYPE_NAME = "NEFT"
"""The member of peft's ``PeftType`` enum that importing ``peft_neft`` adds (see :mod:`peft_neft.tuner.registration`)."""
_PROVENANCE_KEYS = ("method", "strategy", "budget", "parts")


def normalize_rows(module: str, rows: Any) -> torch.Tensor:
    """Validate one module's row list and return it as a sorted int64 CPU tensor."""
    if isinstance(rows, torch.Tensor):
        tensor = rows
    else:
        try:
            tensor = torch.as_tensor(rows if hasattr(rows, "__array__") else list(rows))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"NeFT rows for module {module!r} must be a sequence of ints: {err}") from err
    if tensor.numel() == 0:
        raise ValueError(
            f"NeFT selection for module {module!r} is empty. Remove the module from `neurons` or select at least one row."
        )
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(
            f"NeFT rows for module {module!r} must be integers, got dtype {tensor.dtype}. "
            "Pass output-neuron indices as ints (e.g. [3, 17, 512])."
        )
    tensor, _ = torch.sort(tensor.to(torch.int64).flatten().cpu())
    check_rows(tensor, module)
    return tensor


def check_rows(rows: torch.Tensor, module: str, out_features: int | None = None) -> None:
    """The one check of a module's row indices, wherever they come from (a config, a checkpoint, a selection file).

    1-D integers, sorted and unique (as NeFT stores them), in ``[0, out_features)`` when ``out_features`` is known.
    """
    if rows.ndim != 1 or rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
        raise ValueError(f"NeFT rows of module {module!r} must be a 1-D tensor of integers, got {rows.dtype} "
                         f"{tuple(rows.shape)}.")
    if rows.numel() and (int(rows.min()) < 0 or (out_features is not None and int(rows.max()) >= out_features)):
        bound = f"[0, {out_features}) (its out_features)" if out_features is not None else "[0, out_features)"
        negative = "; negative indices are not rows" if int(rows.min()) < 0 else ""
        raise ValueError(f"NeFT rows of module {module!r} must lie in {bound}, got min {int(rows.min())} and max "
                         f"{int(rows.max())}{negative}. Was the selection made for another model?")
    if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
        repeated = rows[1:][rows[1:] == rows[:-1]].unique()[:5].tolist()
        detail = f"contain duplicates {repeated}" if repeated else "are not in increasing order"
        raise ValueError(f"NeFT rows of module {module!r} {detail}: they must be sorted and unique (each row once).")


def normalize_module_names(names: Sequence[str], owner: str) -> dict[str, str]:
    """``name -> name relative to the base model`` (peft's ``base_model.model.`` removed).

    Raises if two names become one: which of two spellings of a module should win is not for NeFT to guess.
    ``owner`` names where the names come from in the error.
    """
    clean: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"Module names in {owner} must be strings, got {name!r}.")
        relative = name.removeprefix(PEFT_MODEL_PREFIX)
        spelled = [other for other, rel in clean.items() if rel == relative]
        if spelled:
            raise ValueError(
                f"{owner} names module {relative!r} twice ({spelled[0]!r} and {name!r}): with and without "
                f"{PEFT_MODEL_PREFIX!r} they are the same module. Keep one entry."
            )
        clean[name] = relative
    return clean


def _check_weights_file(folder: str) -> None:
    """A clear error for a local adapter folder whose weights file is missing, unreadable or changed since saved."""
    weights = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        if os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
            return
        raise FileNotFoundError(
            f"The adapter folder {folder!r} has {CONFIG_NAME} but no {SAFETENSORS_WEIGHTS_NAME}, which holds "
            "NeFT's row indices and deltas. Copy the whole adapter folder, or save the adapter again."
        )
    try:
        with safe_open(weights, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{weights!r} is not a readable safetensors file ({err}): it is truncated or corrupt. Save the adapter again."
        ) from err
    verify(weights)  # the sha256 of each tensor, where peft-neft's save stored them


@dataclass
class NeFTConfig(PeftConfig):
    """
    This is the configuration class to store the configuration of a [`NeFTModel`].

    NeFT (Neuron-Level Fine-Tuning, arXiv 2403.11621) trains selected output neurons (rows) of a model's
    Linear layers: each selected row ``r`` of weight ``W`` gets a trainable delta, ``W[r] + delta[r]``, and
    every other weight stays frozen. The selection usually comes from a neuron scorer
    (``peft_neft.select_neurons``); build the config from it with [`NeFTConfig.from_selection`].

    Args:
        neurons (`dict[str, Sequence[int]]`, *optional*):
            The selected output neurons: module name -> row indices, e.g. ``{"model.layers.0.mlp.up_proj": [3,
            17]}``. Names are relative to the base model (``base_model.model.`` may be given and is removed; one
            module named twice is refused). Rows must lie in ``[0, out_features)``, unique. Not written to
            ``adapter_config.json``: the indices are saved in the adapter's safetensors file. ``None`` only when
            ``neuron_counts`` is given, as when peft rebuilds a saved adapter before loading its weights.
        target_modules (`Union[list[str], str]`, *optional*):
            A filter the selected modules must match, with peft's rule: a string is a regex that must match the
            whole module name, a list entry matches the name or its last dotted parts. After construction it holds
            the exact adapted module names.
        neuron_counts (`dict[str, int]`, *optional*):
            Rows per adapted module. Filled from ``neurons``; it is what ``adapter_config.json`` stores, so that a
            saved adapter can be rebuilt before its row indices are loaded.
        delta_dtype (`str`, *optional*):
            dtype of the trainable deltas. ``None`` (the default) follows peft's ``autocast_adapter_dtype``: float32
            deltas when it is ``True`` (peft's default), the base weight's dtype when it is ``False``. An explicit
            ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"float64"`` overrides it, whatever the base model's
            dtype and on every load path. The row update computes in the wider of the input's and the delta's
            dtype; merging adds in float32 and rounds to the weight's dtype.
        init_weights (`bool`, defaults to `True`):
            How to initialise the deltas. ``True``: zeros, so the adapted model computes exactly the base model
            until it is trained. ``False``: random values N(0, 0.1²), drawn from torch's global generator
            (``torch.manual_seed`` controls them) unless ``init_seed`` is given. The random option is meant for
            tests.
        init_seed (`int`, *optional*):
            With ``init_weights=False``: draw each module's deltas from a generator seeded with this seed and the
            module's name instead, so each module's start is reproducible whatever else is selected.
        modules_to_save (`list[str]`, *optional*):
            Modules apart from the NeFT layers to train fully and save in the checkpoint, as in other peft methods.
            As peft never adapts a module it trains fully, a selected module named here (peft's suffix match) is
            refused.
        selection_fingerprint (`str`, *optional*):
            Fingerprint of the weight shapes of the base model the selection was made on
            ([`peft_neft.tuner.fingerprint.model_fingerprint`]). Set by [`NeFTConfig.from_selection`];
            ``get_peft_model`` refuses a model with another fingerprint.
        ignore_fingerprint (`bool`, defaults to `False`):
            Apply the selection even to a model whose fingerprint differs (e.g. after resizing the embeddings), as
            long as every selected module exists with its rows in range.
        selection_provenance (`dict`, *optional*):
            Where the selection came from: its scoring ``method``, ``strategy`` and ``budget``, copied from the
            selection's metadata by [`NeFTConfig.from_selection`]. Informational only (the model card shows it).
        module_shapes (`dict[str, list[int]]`, *optional*):
            ``(out_features, in_features)`` per adapted module, recorded when the adapter is created, so that
            loading it onto a base model with other shapes is refused.
    """

    neurons: Optional[Mapping[str, Sequence[int]]] = field(
        default=None,
        metadata={"help": "The selected output neurons: module name -> row indices (not saved in the config)."},
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "A filter the selected modules must match (peft's rule); afterwards the adapted names."},
    )
    neuron_counts: Optional[dict[str, int]] = field(
        default=None, metadata={"help": "Rows per adapted module; filled from `neurons`."}
    )
    delta_dtype: Optional[str] = field(
        default=None,
        metadata={"help": "dtype of the trainable deltas (float32, bfloat16, float16 or float64); None follows "
                          "peft's autocast_adapter_dtype: float32, or the base's dtype when it is False."},
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: zero deltas. False: random N(0, 0.1^2) deltas, for tests."}
    )
    init_seed: Optional[int] = field(
        default=None,
        metadata={"help": "With init_weights=False: seed the random deltas per module (default: torch's generator)."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules apart from the NeFT layers to train fully and save."}
    )
    selection_fingerprint: Optional[str] = field(
        default=None, metadata={"help": "Fingerprint of the base model the selection was made on."}
    )
    ignore_fingerprint: bool = field(
        default=False, metadata={"help": "Apply the selection to a model with another fingerprint."}
    )
    selection_provenance: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "The selection's scoring method, strategy and budget (informational)."}
    )
    module_shapes: Optional[dict[str, list[int]]] = field(
        default=None, metadata={"help": "(out_features, in_features) per adapted module; filled automatically."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType[PEFT_TYPE_NAME]
        if self.delta_dtype is not None and self.delta_dtype not in _DELTA_DTYPES:
            raise ValueError(f"delta_dtype must be None (follow peft's autocast_adapter_dtype) or one of "
                             f"{sorted(_DELTA_DTYPES)}, got {self.delta_dtype!r}.")
        if not isinstance(self.init_weights, bool):
            hint = (f" For seeded random deltas pass init_weights=False, init_seed={self.init_weights}."
                    if isinstance(self.init_weights, numbers.Integral) else "")
            raise ValueError(f"init_weights must be True (zeros) or False (random), got {self.init_weights!r}.{hint}")
        if self.init_seed is not None:
            seed = self.init_seed
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
                raise ValueError(f"init_seed must be a non-negative int or None, got {self.init_seed!r}.")
            if self.init_weights:
                raise ValueError("init_seed seeds random deltas, but init_weights=True starts them at zero. "
                                 "Pass init_weights=False with it, or drop init_seed.")
        if self.neurons is not None:
            self.neurons = self._resolve_neurons(self.neurons)
            counts = {name: int(rows.numel()) for name, rows in self.neurons.items()}
            if self.neuron_counts is not None and dict(self.neuron_counts) != counts:
                raise ValueError("`neuron_counts` disagrees with `neurons`; pass only `neurons`.")
            self.neuron_counts = counts
        elif not self.neuron_counts:
            raise ValueError(
                "NeFTConfig needs a neuron selection: pass `neurons=` (a dict module -> rows), or build it with "
                "NeFTConfig.from_selection(selection). Use peft_neft.select_neurons to compute one."
            )
        if not isinstance(self.neuron_counts, Mapping):
            raise ValueError(f"neuron_counts must be a dict module -> rows, got a {type(self.neuron_counts).__name__}. "
                             "If it came from adapter_config.json, that file is corrupt: save the adapter again.")
        for name, count in self.neuron_counts.items():
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
                raise ValueError(
                    f"neuron_counts of module {name!r} must be a positive number of rows, got {count!r}. "
                    "If it came from adapter_config.json, that file is corrupt: save the adapter again."
                )
        names = normalize_module_names(list(self.neuron_counts), "neuron_counts")
        self.neuron_counts = {names[name]: int(count) for name, count in self.neuron_counts.items()}
        if self.target_modules is not None:
            targets = SimpleNamespace(target_modules=self.target_modules, target_parameters=None)
            unmatched = [n for n in self.neuron_counts if not check_target_module_exists(targets, n)]
            if unmatched:
                raise ValueError(
                    f"Selected modules {unmatched[:5]} do not match target_modules={self.target_modules!r}. "
                    "Widen target_modules or drop those modules from the selection."
                )
        self.target_modules = sorted(self.neuron_counts)
        self._refuse_selected_modules_to_save()

    def _refuse_selected_modules_to_save(self) -> None:
        """peft never adapts a module it trains fully (``modules_to_save``), so a selected one is refused here,
        before peft meets it as a NeFT layer. Matching is peft's: a module name ending with an entry."""
        for entry in self.modules_to_save or []:
            both = [name for name in self.neuron_counts if name.endswith(entry)]
            if both:
                raise ValueError(
                    f"NeFT selects rows of module {both[0]!r}, which modules_to_save={self.modules_to_save!r} also "
                    f"names (entry {entry!r}): a module is either trained fully (modules_to_save) or in selected "
                    "rows (NeFT), not both. Drop it from the selection, or from modules_to_save."
                )

    @classmethod
    def from_selection(cls, selection: Any, **kwargs: Any) -> "NeFTConfig":
        """A config for the rows of a ``peft_neft.NeuronSelection``, with its fingerprint and provenance.

        Example::

            selection = NeuronSelection.load("selection.safetensors")
            config = NeFTConfig.from_selection(selection, delta_dtype="bfloat16")

        Args:
            selection: A ``NeuronSelection`` (anything with ``rows``, ``fingerprint`` and ``metadata``).
            kwargs: Any other ``NeFTConfig`` field.
        """
        rows = getattr(selection, "rows", None)
        if not isinstance(rows, Mapping):
            raise TypeError(
                f"NeFTConfig.from_selection needs a NeuronSelection, got {type(selection).__name__}. For a file, pass "
                "NeuronSelection.load(path); for a dict of rows use NeFTConfig(neurons=...)."
            )
        metadata = getattr(selection, "metadata", None) or {}
        provenance = {key: metadata[key] for key in _PROVENANCE_KEYS if key in metadata}
        kwargs.setdefault("selection_fingerprint", getattr(selection, "fingerprint", None))
        kwargs.setdefault("selection_provenance", provenance or None)
        return cls(neurons=rows, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs: Any):
        """peft's loader; an error in ``adapter_config.json`` or an unreadable weights file names the file.

        peft reads the weights only after building the model, and looks on the Hub for a file missing from a
        local folder; this is the one hook it calls with the adapter's location, so the weights file is
        checked here, before any model is touched.
        """
        folder = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder or "")
        config_file = os.path.join(folder, CONFIG_NAME)
        if not os.path.isfile(config_file):  # not a local adapter folder (a Hub id): peft finds and reads it
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        try:
            with open(config_file, encoding="utf-8") as handle:
                raw = json.load(handle)
            if not isinstance(raw, dict) or raw.get("peft_type") != PEFT_TYPE_NAME:
                found = raw.get("peft_type") if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
                raise ValueError(f"it must be a JSON object with peft_type {PEFT_TYPE_NAME!r}, found {found!r}")
            config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except (ValueError, TypeError, AttributeError, KeyError) as err:  # UnicodeDecodeError, JSONDecodeError too
            raise ValueError(f"{config_file!r} is not a valid NeFT adapter config ({err}). Save the adapter again.") from err
        _check_weights_file(folder)
        return config

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """peft's config save, after each of :data:`~peft_neft.tuner.hooks.SAVE_HOOKS`."""
        for hook in SAVE_HOOKS:
            hook(save_directory, self)
        super().save_pretrained(save_directory, **kwargs)

    @staticmethod
    def _resolve_neurons(spec: Any) -> dict[str, torch.Tensor]:
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"`neurons` must be a dict module name -> rows, got {type(spec).__name__}. For a NeuronSelection "
                "or its file, use NeFTConfig.from_selection(selection) (NeuronSelection.load(path) reads a file)."
            )
        if not spec:
            raise ValueError("The NeFT selection is empty: select at least one row of one module.")
        names = normalize_module_names(list(spec), "`neurons`")
        return {names[name]: normalize_rows(names[name], rows) for name, rows in spec.items()}

    @property
    def torch_delta_dtype(self) -> Optional[torch.dtype]:
        """``delta_dtype`` as a ``torch.dtype`` (``None``: follow peft's ``autocast_adapter_dtype``)."""
        return None if self.delta_dtype is None else _DELTA_DTYPES[self.delta_dtype]

    @property
    def num_rows(self) -> int:
        """Total number of selected rows over all modules."""
        return sum(self.neuron_counts.values())

    def to_dict(self) -> dict[str, Any]:
        """Serializable form: the row indices themselves live in the adapter weights file."""
        neurons, self.neurons = self.neurons, None
        try:
            return super().to_dict()
        finally:
            self.neurons = neurons
