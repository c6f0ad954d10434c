"""Where and in which precision a model trains: ``--device`` and ``--dtype`` resolved once, loudly.

``auto`` picks bfloat16 only where the hardware runs bf16 matrix math natively: a CUDA device that
supports it, or a CPU whose torch build reports AVX512-BF16 or AMX. Elsewhere (for example an
AVX2-only CPU, where torch emulates bf16 GEMMs and they run several times slower than float32) it
picks float32. An explicit choice the machine cannot honour is an error naming the flag, never a
silent fallback.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import ContextManager

import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX) according to torch."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    text = str(device).strip().lower()
    if text == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("device auto -> %s", resolved)
        return resolved
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


def supports_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix math natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` -> bfloat16 where ``device`` runs it natively, else float32; ``bfloat16`` elsewhere is an error."""
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        name = {v: k for k, v in _DTYPES.items()}.get(dtype)
        if name is None:
            raise ValueError(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPE_CHOICES)}.")
        dtype = name
    text = str(dtype).strip().lower()
    if text == "auto":
        resolved = torch.bfloat16 if supports_bf16(device) else torch.float32
        logger.info("dtype auto -> %s on %s (%s)", str(resolved).removeprefix("torch."), device,
                    "native bf16 matrix math" if resolved == torch.bfloat16 else "no native bf16 matrix math")
        return resolved
    if text not in _DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPE_CHOICES)}.")
    if text == "bfloat16" and not supports_bf16(device):
        where = "this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu" else f"{device} has no bf16 support"
        raise ValueError(f"--dtype bfloat16: {where}; use --dtype float32 or auto.")
    return _DTYPES[text]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling of ``--dtype``)."""
    return str(dtype).removeprefix("torch.")


def autocast_for(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Autocast to ``dtype`` on ``device`` when it is a low precision, else a no-op context."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
