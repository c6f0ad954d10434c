"""Adapter weights that tell when they were changed: a sha256 of each tensor in the safetensors metadata.

safetensors itself has no checksum, so a flipped byte in a delta loads silently. peft-neft's own saves
(:func:`~peft_neft.adapters.saving.save_pretrained_atomically`, export and import) store one digest per tensor under
:data:`METADATA_KEY`; :func:`verify` checks them where a file carries them, and accepts files without them
(saved by plain peft) as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

METADATA_KEY = "peft_neft_sha256"  # JSON: tensor name -> sha256 of its bytes


def digest(tensor: torch.Tensor) -> str:
    """The sha256 of a tensor's bytes as stored (dtype and shape are checked by the file's own header)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Metadata entries that let :func:`verify` check every tensor of ``tensors``."""
    return {METADATA_KEY: json.dumps({name: digest(t) for name, t in sorted(tensors.items())})}


def save_with_checksums(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with a checksum of each tensor in the metadata, and the metadata's keys in
    sorted order: safetensors writes them in hash order, which differs between processes, and the same tensors
    must give the same bytes."""
    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata={**(metadata or {}), **checksums(tensors)})
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors pads it
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + blob[8 + length:])


def add_checksums(path: str | os.PathLike) -> None:
    """Rewrite the safetensors file at ``path`` (not yet in its final place) with a checksum of each tensor."""
    with safe_open(os.fspath(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    save_with_checksums(load_file(os.fspath(path)), path, metadata)


def verify(path: str | os.PathLike) -> None:
    """Refuse a safetensors file whose tensors differ from the checksums stored with them; files without any pass."""
    with safe_open(os.fspath(path), framework="pt") as handle:
        stored = (handle.metadata() or {}).get(METADATA_KEY)
        if stored is None:
            return
        try:
            expected = json.loads(stored)
        except json.JSONDecodeError:
            expected = None
        if not isinstance(expected, dict) or set(expected) != set(handle.keys()):
            raise ValueError(f"{os.fspath(path)}: the checksums stored in its metadata do not list its tensors: the "
                             "file was edited or damaged after it was saved. Save the adapter again.")
        for name in sorted(expected):
            if digest(handle.get_tensor(name)) != expected[name]:
                raise ValueError(f"{os.fspath(path)}: tensor {name} does not match the sha256 saved with it: the file "
                                 "was changed or damaged after it was saved. Save (or copy) the adapter again.")
