"""``NeFTConfig``: which output neurons (rows) of which Linear layers are trained."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from peft.config import PeftConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, PeftType
from safetensors import SafetensorError, safe_open

from .._targets import matches
from ..neuron_selection import NeuronSelection
from .model_card import write_model_card

NeuronsSpec = Union[Mapping[str, Sequence[int]], NeuronSelection, str, os.PathLike]

_DELTA_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_PEFT_MODEL_PREFIX = "base_model.model."
PEFT_TYPE_NAME = "NEFT"
"""The member of peft's ``PeftType`` enum that importing ``peft_neft`` adds (see :mod:`peft_neft.tuner.registration`)."""


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
    tensor = tensor.to(torch.int64).flatten().cpu()
    if (tensor < 0).any():
        raise ValueError(
            f"NeFT rows for module {module!r} contain negative indices {tensor[tensor < 0][:5].tolist()}; "
            "rows are output-neuron indices in [0, out_features)."
        )
    tensor, _ = torch.sort(tensor)
    duplicated = tensor[1:][tensor[1:] == tensor[:-1]]
    if duplicated.numel():
        raise ValueError(
            f"NeFT rows for module {module!r} contain duplicates {duplicated.unique()[:5].tolist()}; "
            "each row may be selected once."
        )
    return tensor


def _check_weights_file(folder: str) -> None:
    """A clear error for a local adapter folder whose weights (NeFT's rows and deltas) are missing or unreadable.

    peft would otherwise look for a missing file on the Hub, and fail with a network or parse error.
    """
    weights = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        if os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
            return
        raise FileNotFoundError(
            f"The adapter folder {folder!r} has adapter_config.json but no {SAFETENSORS_WEIGHTS_NAME}, which holds "
            "NeFT's row indices and deltas. Copy the whole adapter folder, or save the adapter again."
        )
    try:
        with safe_open(weights, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{weights!r} is not a readable safetensors file ({err}): it is truncated or corrupt. "
            "Save the adapter again."
        ) from err


@dataclass
class NeFTConfig(PeftConfig):
    """Configuration of a NeFT adapter.

    Args:
        neurons: The selected output neurons: a mapping ``module name -> row indices``, a
            :class:`~peft_neft.NeuronSelection`, or the path of a saved selection. Module names are
            relative to the base model (``"model.layers.0.mlp.up_proj"``). Not written to
            ``adapter_config.json``: the indices are saved in the adapter's safetensors file.
        target_modules: Optional filter (peft's rule: regex or list of name suffixes). Every module in
            ``neurons`` must match it. After construction it holds the exact adapted module names.
        neuron_counts: Rows per module. Filled from ``neurons``; it is what ``adapter_config.json``
            stores so that a saved adapter can be rebuilt before its indices are loaded.
        delta_dtype: dtype of the trainable deltas (``"float32"`` by default, whatever the base dtype).
        modules_to_save: Extra modules to train fully and save, as in other peft methods.
        selection_fingerprint: Fingerprint of the base model's shapes the selection was made on; taken from a
            :class:`~peft_neft.NeuronSelection` (or its file). ``get_peft_model`` refuses a model with another one.
        ignore_fingerprint: Apply the selection even to a model whose fingerprint differs (e.g. after resizing
            the embeddings), as long as every selected module exists with its rows in range.
        module_shapes: ``(out_features, in_features)`` per adapted module, recorded when the adapter is created
            so that loading it onto a base with other shapes is refused.
    """

    neurons: Optional[NeuronsSpec] = field(
        default=None, metadata={"help": "module name -> selected output-neuron rows, a NeuronSelection, or its path"}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "optional filter the selected modules must match (peft's matching rule)"}
    )
    neuron_counts: Optional[dict[str, int]] = field(
        default=None, metadata={"help": "rows per adapted module; filled automatically from `neurons`"}
    )
    delta_dtype: str = field(default="float32", metadata={"help": "dtype of the trainable row deltas"})
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "modules apart from NeFT layers to train and save"}
    )
    selection_fingerprint: Optional[str] = field(
        default=None, metadata={"help": "fingerprint of the base model the selection was made on"}
    )
    ignore_fingerprint: bool = field(
        default=False, metadata={"help": "apply the selection to a model with another fingerprint"}
    )
    module_shapes: Optional[dict[str, list[int]]] = field(
        default=None, metadata={"help": "(out_features, in_features) per adapted module; filled automatically"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType[PEFT_TYPE_NAME]
        if self.delta_dtype not in _DELTA_DTYPES:
            raise ValueError(f"delta_dtype must be one of {sorted(_DELTA_DTYPES)}, got {self.delta_dtype!r}.")
        if isinstance(self.neurons, (str, os.PathLike)):
            self.neurons = NeuronSelection.load(self.neurons)
        if isinstance(self.neurons, NeuronSelection) and self.selection_fingerprint is None:
            self.selection_fingerprint = self.neurons.fingerprint
        if self.neurons is not None:
            self.neurons = self._resolve_neurons(self.neurons)
            counts = {name: int(rows.numel()) for name, rows in self.neurons.items()}
            if self.neuron_counts is not None and dict(self.neuron_counts) != counts:
                raise ValueError("`neuron_counts` disagrees with `neurons`; pass only `neurons`.")
            self.neuron_counts = counts
        elif not self.neuron_counts:
            raise ValueError(
                "NeFTConfig needs a neuron selection: pass `neurons=` (a dict module -> rows, a NeuronSelection, "
                "or a path to a saved selection). Use peft_neft.select_neurons to compute one."
            )
        for name, count in self.neuron_counts.items():
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
                raise ValueError(
                    f"neuron_counts of module {name!r} must be a positive number of rows, got {count!r}. "
                    "If it came from adapter_config.json, that file is corrupt: save the adapter again."
                )
        self.neuron_counts = {name: int(count) for name, count in self.neuron_counts.items()}
        if self.target_modules is not None:
            unmatched = [n for n in self.neuron_counts if not matches(self.target_modules, n)]
            if unmatched:
                raise ValueError(
                    f"Selected modules {unmatched[:5]} do not match target_modules={self.target_modules!r}. "
                    "Widen target_modules or drop those modules from the selection."
                )
        self.target_modules = sorted(self.neuron_counts)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs: Any):
        """peft's loader, which also checks that a local adapter folder holds a readable weights file."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        folder = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder or "")
        if os.path.isdir(folder):
            _check_weights_file(folder)
        return config

    @staticmethod
    def _resolve_neurons(spec: NeuronsSpec) -> dict[str, torch.Tensor]:
        if isinstance(spec, NeuronSelection):
            spec = spec.rows
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"`neurons` must be a dict, a NeuronSelection or a path, got {type(spec).__name__}."
            )
        if not spec:
            raise ValueError("The NeFT selection is empty: select at least one row of one module.")
        resolved = {}
        for name, rows in spec.items():
            clean = name[len(_PEFT_MODEL_PREFIX):] if name.startswith(_PEFT_MODEL_PREFIX) else name
            resolved[clean] = normalize_rows(clean, rows)
        return resolved

    @property
    def torch_delta_dtype(self) -> torch.dtype:
        return _DELTA_DTYPES[self.delta_dtype]

    @property
    def num_rows(self) -> int:
        """Total number of selected rows over all modules."""
        return sum(self.neuron_counts.values())

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` and a model card saying the adapter needs ``peft-neft`` to load."""
        super().save_pretrained(save_directory, **kwargs)
        write_model_card(save_directory, self.base_model_name_or_path)

    def to_dict(self) -> dict[str, Any]:
        """Serializable form: the row indices themselves live in the adapter weights file."""
        neurons, self.neurons = self.neurons, None
        try:
            return super().to_dict()
        finally:
            self.neurons = neurons
