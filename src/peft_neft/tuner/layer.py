"""The NeFT layer: trainable deltas for selected output neurons of a frozen Linear or Conv1D.

For a base layer ``y = base(x)`` with selected rows ``R`` (k of them) and a delta ``D`` (k x in):

    y = base(x);   y[..., R] += x @ D^T

The frozen weight is never copied or given a gradient: autograd keeps only ``x`` (which the base
layer keeps anyway), ``D`` and the index, and the gradient of ``D`` is ``g[..., R]^T @ x``. This is the
same update as training rows ``R`` of the weight directly (the paper's gradient masking), see
``docs/layer.md``.
"""

from __future__ import annotations

import sys
import warnings
import zlib
from typing import Any, Optional

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import check_rows
from .row_update import add_rows_, linear_with_rows


class NeFTLayer(BaseTunerLayer):
    """Holds, per adapter, a trainable ``neft_delta`` (k x in) and the ``neft_rows`` it updates."""

    adapter_layer_names = ("neft_delta",)
    other_param_names = ("neft_rows", "neft_original_rows")

    def __init__(self, base_layer: nn.Module, module_name: str = "") -> None:
        self.base_layer = base_layer
        self.module_name = module_name
        self.neft_delta = nn.ParameterDict()
        self.neft_rows = BufferDict(persistent=True)
        # Rows of the weight as they were before a merge, so unmerge restores them bit for bit.
        self.neft_original_rows = BufferDict(persistent=False)
        self._rows_awaiting_load: set[str] = set()
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        self.is_conv1d = isinstance(base, Conv1D)
        self.in_features, self.out_features = _get_in_out_features(base)
        if None in (self.in_features, self.out_features):
            raise TypeError(
                f"NeFT cannot adapt module {module_name!r} of type {type(base).__name__}: only torch.nn.Linear "
                "and transformers' Conv1D (and quantized Linear layers peft recognizes) are supported. "
                "Remove it from the selection."
            )

    def update_layer(
        self,
        adapter_name: str,
        rows: Optional[torch.Tensor],
        num_rows: int,
        delta_dtype: Optional[torch.dtype] = None,
        init_weights: bool = True,
        init_seed: Optional[int] = None,
        inference_mode: bool = False,
    ) -> None:
        """Add an adapter with ``num_rows`` selected rows (``rows=None``: indices come from a checkpoint).

        ``delta_dtype=None`` creates the delta in the base weight's dtype, as peft's tuners create their adapters;
        ``NeFTModel._cast_adapter_dtype`` then applies ``autocast_adapter_dtype``. ``init_weights``/``init_seed``:
        see ``NeFTConfig``.
        """
        if rows is None:
            rows = torch.full((num_rows,), -1, dtype=torch.int64)
            self._rows_awaiting_load.add(adapter_name)
        else:
            check_rows(rows, self.module_name, self.out_features)
        device = self._base_device()
        self.neft_rows[adapter_name] = rows.to(device=device, dtype=torch.int64)
        dtype = delta_dtype or self._base_float_dtype()
        delta = self._initial_delta(num_rows, init_weights, init_seed, dtype, device)
        self.neft_delta[adapter_name] = nn.Parameter(delta)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _initial_delta(
        self, num_rows: int, init_weights: bool, init_seed: Optional[int], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """Zeros, or N(0, 0.1^2) drawn on the CPU (so any device gives the same values): from torch's global
        generator, or with ``init_seed`` from a generator seeded by the seed and the module's name."""
        if init_weights:
            return torch.zeros(num_rows, self.in_features, dtype=dtype, device=device)
        generator = None
        if init_seed is not None:
            generator = torch.Generator().manual_seed(init_seed * 1_000_003 + zlib.crc32(self.module_name.encode()))
        return (0.1 * torch.randn(num_rows, self.in_features, generator=generator)).to(dtype=dtype, device=device)

    def _base_float_dtype(self) -> torch.dtype:
        """The base weight's dtype where it is a float (quantized weights: float32)."""
        weight = getattr(self.get_base_layer(), "weight", None)
        dtype = getattr(weight, "dtype", None)
        return dtype if dtype is not None and dtype.is_floating_point else torch.float32

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        """Move the adapter's tensors to the base layer's device, never changing their dtype.

        peft's version also casts float adapters to the base dtype; on a ``low_cpu_mem_usage`` load that would
        round the checkpoint's deltas before ``NeFTModel._cast_adapter_dtype`` settles their dtype.
        """
        target = device if device is not None else self._base_device()
        for name in (*self.adapter_layer_names, *self.other_param_names):
            tensors = getattr(self, name)
            if adapter_name in tensors and tensors[adapter_name].device.type != "meta":
                tensors[adapter_name] = tensors[adapter_name].to(target)

    def _base_device(self) -> torch.device:
        weight = getattr(self.get_base_layer(), "weight", None)
        return weight.device if weight is not None and weight.device.type != "meta" else torch.device("cpu")

    def _check_incoming_state(self, state_dict: dict[str, torch.Tensor], prefix: str) -> None:
        """Validate a checkpoint's rows and deltas for this layer before ``load_state_dict`` copies them.

        An adapter built from counts only (awaiting its rows) must find both tensors in the checkpoint.
        """
        for adapter_name in list(self.neft_rows.keys()):
            key = f"{prefix}neft_rows.{adapter_name}"
            delta_key = f"{prefix}neft_delta.{adapter_name}"
            if adapter_name in self._rows_awaiting_load:
                for tensor_key, name in ((key, "neft_rows"), (delta_key, "neft_delta")):
                    if tensor_key not in state_dict:
                        raise ValueError(
                            f"The adapter checkpoint has no tensor '{prefix}{name}' (adapter {adapter_name!r} of "
                            f"module {self.module_name!r}): the file is incomplete or belongs to another adapter. "
                            "Save the adapter again."
                        )
            if key in state_dict:
                incoming = state_dict[key]
                if incoming.shape != self.neft_rows[adapter_name].shape:
                    raise ValueError(
                        f"The adapter checkpoint selects {incoming.numel()} rows of module {self.module_name!r} "
                        f"but adapter_config.json declares {self.neft_rows[adapter_name].numel()}: "
                        "the adapter folder mixes files from different saves."
                    )
                if incoming.dtype.is_floating_point or incoming.dtype.is_complex or incoming.dtype == torch.bool:
                    raise ValueError(
                        f"The NeFT rows of module {self.module_name!r} ('{prefix}neft_rows') must be integers, "
                        f"got {str(incoming.dtype).removeprefix('torch.')}: the adapter file is corrupt. Save it again."
                    )
                check_rows(incoming, self.module_name, self.out_features)
                self._rows_awaiting_load.discard(adapter_name)
            if delta_key in state_dict and not state_dict[delta_key].dtype.is_floating_point:
                raise ValueError(
                    f"The NeFT delta of module {self.module_name!r} ('{prefix}neft_delta') must be floating point, "
                    f"got {str(state_dict[delta_key].dtype).removeprefix('torch.')}: the adapter file is corrupt. "
                    "Save it again."
                )
            if delta_key in state_dict and state_dict[delta_key].shape != self.neft_delta[adapter_name].shape:
                raise ValueError(
                    f"The NeFT delta of module {self.module_name!r} in the checkpoint has shape "
                    f"{tuple(state_dict[delta_key].shape)}, but this base model needs "
                    f"{tuple(self.neft_delta[adapter_name].shape)}: the adapter was trained on a base model "
                    "with different layer shapes. Load it onto the base model it was trained on."
                )

    def _weight_rows_view(self) -> torch.Tensor:
        """The base weight as (out_features, in_features), a view for Conv1D's transposed storage."""
        weight = self.get_base_layer().weight
        torchao_utils = sys.modules.get("torchao.utils")  # torchao weights report their float dtype
        torchao_weight = torchao_utils is not None and isinstance(weight, torchao_utils.TorchAOBaseTensor)
        if torchao_weight or not weight.dtype.is_floating_point:
            stored = f"torchao {type(weight).__name__}" if torchao_weight else weight.dtype
            raise NotImplementedError(
                f"Cannot merge NeFT into module {self.module_name!r}: its weight is stored as {stored} "
                "(a quantized base). Keep the adapter unmerged, or merge into a float copy of the base model."
            )
        return weight.data.T if self.is_conv1d else weight.data

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add the deltas into the selected rows of the base weight: ``W[R] += D``.

        With ``safe_merge`` every adapter's result is checked before the weight is changed at all.
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        plan = self.merge_plan(adapter_names, safe_merge=safe_merge)
        weight = self._weight_rows_view()
        for name, rows, original, merged in plan:
            weight.index_copy_(0, rows, merged)
            self.neft_original_rows[name] = original
            self.merged_adapters.append(name)

    def merge_plan(
        self, adapter_names: list[str], safe_merge: bool = False
    ) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(name, rows, original rows, merged rows)`` per adapter, in merge order, without touching the weight.

        Overlapping adapters compose: each one's original rows are the previous one's merged rows. Raises,
        naming the module, if a merge is impossible (rows never loaded, a quantized weight, or, with
        ``safe_merge``, a non-finite result), so a model can check every layer before changing any.
        """
        names = [name for name in adapter_names if name in self.neft_delta]
        for name in names:
            self._require_rows_loaded(name)
        if not names:
            return []
        weight = self._weight_rows_view()
        touched = torch.unique(torch.cat([self.neft_rows[name] for name in names]))  # sorted
        scratch = weight.index_select(0, touched)
        plan = []
        for name in names:
            rows = self.neft_rows[name]
            where = torch.searchsorted(touched, rows)
            original = scratch.index_select(0, where)
            merged = (original.float() + self.neft_delta[name].detach().float()).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(
                    f"Merging NeFT adapter {name!r} into module {self.module_name!r} gives non-finite weights; "
                    "the adapter is broken (check the training loss for NaN/inf). Nothing was merged."
                )
            scratch.index_copy_(0, where, merged)
            plan.append((name, rows, original, merged))
        return plan

    def unmerge(self) -> None:
        """Restore the rows saved at merge time, so the base weight is bit-for-bit the original."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        weight = self._weight_rows_view()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight.index_copy_(0, self.neft_rows[name], self.neft_original_rows.pop(name))

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense update of one adapter in the base weight's layout ((out, in); (in, out) for Conv1D).

        Never used in forward; peft's ``convert_to_lora`` factorises it.
        """
        self._require_rows_loaded(adapter_name)
        delta = torch.zeros(self.out_features, self.in_features, dtype=self.neft_delta[adapter_name].dtype,
                            device=self.neft_delta[adapter_name].device)
        delta.index_copy_(0, self.neft_rows[adapter_name], self.neft_delta[adapter_name].detach())
        return delta.T if self.is_conv1d else delta

    def _require_rows_loaded(self, adapter_name: str) -> None:
        if adapter_name not in self._rows_awaiting_load:
            return
        rows = self.neft_rows[adapter_name]
        if rows.numel() and bool((rows >= 0).all()):  # filled by a loader that bypasses _load_from_state_dict
            check_rows(rows, self.module_name, self.out_features)  # (transformers' load_adapter): the -1 placeholders are gone
            self._rows_awaiting_load.discard(adapter_name)
        else:
            raise RuntimeError(
                f"NeFT adapter {adapter_name!r} of module {self.module_name!r} was built from neuron counts only "
                "and its row indices were never loaded. Load it with PeftModel.from_pretrained / load_adapter, "
                "or create it from a config with `neurons=`."
            )

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """NeFT's update is additive (``W + delta_W``), so peft's ``convert_to_lora`` applies; an exact
        conversion is :func:`peft_neft.tuner.conversion.rows_to_lora`."""
        return True


class Linear(nn.Module, NeFTLayer):
    """NeFT around an ``nn.Linear`` or transformers ``Conv1D`` base layer."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        rows: Optional[torch.Tensor],
        num_rows: int,
        delta_dtype: Optional[torch.dtype] = None,
        init_weights: bool = True,
        init_seed: Optional[int] = None,
        module_name: str = "",
    ) -> None:
        super().__init__()
        NeFTLayer.__init__(self, base_layer, module_name=module_name)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, rows, num_rows, delta_dtype, init_weights=init_weights, init_seed=init_seed)

    def _load_from_state_dict(self, state_dict, prefix, *args: Any) -> None:
        self._check_incoming_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.neft_delta]
        if self._rows_awaiting_load:
            for name in active:
                self._require_rows_loaded(name)
        base = self.base_layer
        fusable = len(active) == 1 and self._is_plain_linear(base) and not args and not kwargs
        if fusable and not torch.is_autocast_enabled(x.device.type):
            # One autograd node: the base GEMM and the row update, saving only x, D and the index.
            # (Under autocast the base GEMM must run through autocast's own linear, so it is not fused.)
            return linear_with_rows(x, base.weight, base.bias, self.neft_delta[active[0]], self.neft_rows[active[0]])
        result = base(x, *args, **kwargs)
        if active and type(base) not in (nn.Linear, Conv1D):
            # Quantized kernels (e.g. bitsandbytes) return outputs of custom autograd Functions, which
            # autograd forbids modifying in place; one copy keeps the row update out of their way.
            result = result.clone()
        for name in active:
            result = add_rows_(result, x, self.neft_delta[name], self.neft_rows[name])
        return result

    @staticmethod
    def _is_plain_linear(base: nn.Module) -> bool:
        """A float ``nn.Linear`` without hooks, whose GEMM NeFT may run itself (quantized bases keep their own)."""
        return (type(base) is nn.Linear and type(base.weight.data) is torch.Tensor
                and not (base._forward_hooks or base._forward_pre_hooks))

    def __repr__(self) -> str:
        return "neft." + super().__repr__()
