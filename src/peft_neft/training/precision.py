"""One precision policy: ``--device`` and ``--dtype`` resolved once into a :class:`Precision`, applied here.

``--dtype`` means the same in every command: frozen weights are stored in that dtype, trained tensors
stay float32 (master weights, as peft keeps adapters), and every forward pass (training, the
target-only loss, validation, generation) runs under autocast to that dtype. ``auto`` picks bfloat16
only where the hardware runs bf16 matrix math natively: a CUDA device that supports it, or a CPU whose
torch build reports AVX512-BF16 or AMX; elsewhere float32. ``bfloat16`` where it is only emulated
(an AVX2 CPU) runs, correct but several times slower than float32, after one warning: it still halves
the memory of frozen weights. float16 is refused (it needs loss scaling, which this engine does not do).
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX) according to torch."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix math natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use one of {', '.join(DEVICE_CHOICES)}.") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"--device {device!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}.")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this machine has no CUDA device (torch {torch.__version__}); "
                         "use --device cpu or auto.")
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    return resolved


@functools.lru_cache(maxsize=None)
def _warn_emulated(device: str) -> None:
    logger.warning("--dtype bfloat16 on %s: bf16 matrix math is emulated here (%s), so it is correct but several "
                   "times slower than float32; it still halves the memory of frozen weights.", device,
                   "no AVX512-BF16 or AMX" if device == "cpu" else "no native bf16 support")


@dataclass(frozen=True)
class Precision:
    """Where and in which dtype a model runs; make it with :meth:`resolve` and pass it down.

    Attributes:
        device: the torch device.
        dtype: frozen weights are stored in it and every forward runs under autocast to it.
        native: whether ``device`` runs ``dtype``'s matrix math natively (always true for float32).
    """

    device: torch.device
    dtype: torch.dtype
    native: bool

    @classmethod
    def resolve(cls, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> "Precision":
        """Resolve ``--device`` and ``--dtype`` (say so in the log); an impossible choice is an error naming the flag."""
        resolved = resolve_device(device)
        name = _dtype_text(dtype)
        native = native_bf16(resolved)
        if name == "auto":
            name = "bfloat16" if native else "float32"
            logger.info("precision: %s on %s (auto: %s)", name, resolved,
                        "native bf16 matrix math" if native else "no native bf16 matrix math")
        elif name == "bfloat16" and not native:
            _warn_emulated(resolved.type)
        return cls(resolved, DTYPES[name], native or name == "float32")

    @property
    def pad_to_multiple_of(self) -> int | None:
        """Training batches' padded length is rounded up to this (``None``: the longest row, as float32 does).

        bf16 matrix kernels are prepared once per shape, so batches of ever-new lengths pay that again and again;
        with lengths rounded to 16 they reuse them: a NeFT demo step took 0.68 s instead of 0.85 s in bf16 on an
        AVX512-BF16 Xeon (float32: 0.87-0.91 s either way; docs/precision.md). Padding is masked: the loss is
        unchanged.
        """
        return 16 if self.dtype == torch.bfloat16 else None

    @property
    def name(self) -> str:
        """The dtype as ``--dtype`` spells it: ``"float32"`` or ``"bfloat16"``."""
        return dtype_name(self.dtype)

    def autocast(self) -> ContextManager:
        """Autocast to the dtype on the device; a no-op for float32."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def apply(self, model: nn.Module) -> nn.Module:
        """Frozen floating-point weights in the dtype, trainable ones in float32, all on the device.

        Call it after choosing what trains: a model loaded in float32 keeps full precision where it trains.
        """
        for p in model.parameters():
            if p.is_floating_point():
                wanted = torch.float32 if p.requires_grad else self.dtype
                if p.dtype != wanted:
                    p.data = p.data.to(wanted)
        return model.to(self.device)


def _dtype_text(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        text = {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))
    else:
        text = str(dtype).strip().lower()
    if text in ("float16", "torch.float16", "half", "fp16"):
        raise ValueError("--dtype float16 is not supported: it needs loss scaling, which this engine does not do; "
                         f"use one of {', '.join(DTYPE_CHOICES)} (bfloat16 has float32's range).")
    if text != "auto" and text not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPE_CHOICES)}.")
    return text


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling of ``--dtype``)."""
    return str(dtype).removeprefix("torch.")
