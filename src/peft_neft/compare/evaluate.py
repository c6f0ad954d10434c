"""What a trained model is measured by: greedy generation on the test set, stored size, training memory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..atomic import atomic_path
from ..training.precision import Precision
from ..training.trainer import trainable_parameters
from .methods import Method

logger = logging.getLogger(__name__)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def contiguous_head_input(model: torch.nn.Module) -> Iterator[None]:
    """Feed the LM head a contiguous input while generating.

    transformers gives the head the last position as a strided view (``hidden[:, -1:, :]``). For such a bf16
    input, torch's CPU ``linear`` falls back to a batched matmul that copies the whole head weight once per
    row: 3 s for a batch of 32 on SmolLM2 (49,152 x 576 head) on an AVX512-BF16 Xeon, against 5 ms for the
    same input made contiguous (docs/precision.md).
    """
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:])) if head is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _prompts_digest(prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int) -> str:
    return hashlib.sha256(json.dumps([max_new_tokens, batch_size, [list(p) for p in prompts]]).encode()).hexdigest()


def _decoded_so_far(path: Path, digest: str) -> dict[int, str]:
    """The continuations a stopped :func:`generate` stored in ``path`` for the same prompts (else none)."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        if not lines or json.loads(lines[0]).get("prompts") != digest:
            return {}
    except ValueError:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill: its batch is decoded again
            break
        done.update({int(i): text for i, text in record["outputs"].items()})
    return done


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]], *,
             max_new_tokens: int, batch_size: int, precision: Precision | None = None, desc: str = "generate",
             progress: bool = True, decoded: Path | None = None) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches, stop at EOS), decoded and stripped.

    Under ``precision``'s autocast (default: none) on the model's device. With ``decoded``, each batch's
    continuations are appended to that JSON-lines file as it ends, and a later call with the same prompts and
    settings (after a kill) decodes only the batches it lacks; a file made for other prompts is started anew.
    """
    model.eval()
    pad_id, device = tokenizer.pad_token_id, model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    digest = _prompts_digest(prompts, max_new_tokens, batch_size) if decoded is not None else ""
    outputs = _decoded_so_far(decoded, digest) if decoded is not None else {}
    if decoded is not None:  # written anew (atomically) with what it holds: a line a kill cut short is dropped
        if outputs:
            logger.info("%s: %d of %d continuations decoded before, in %s", desc, len(outputs), len(prompts), decoded)
        records = [{"prompts": digest}] + ([{"outputs": outputs}] if outputs else [])
        with atomic_path(decoded) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=not progress):
        chunk = order[start:start + batch_size]
        if all(i in outputs for i in chunk):
            continue
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device=device)
        with precision.autocast() if precision else nullcontext(), contiguous_head_input(model):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 num_beams=1, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        texts = {i: tokenizer.decode(row, skip_special_tokens=True).strip() for i, row in zip(chunk, out[:, width:])}
        outputs.update(texts)
        if decoded is not None:
            with open(decoded, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"outputs": texts}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
    return [outputs[i] for i in range(len(prompts))]


def adapter_bytes(model: torch.nn.Module, method: Method) -> int:
    """Size of what must be stored for the method: peft's adapter file, or the trained tensors."""
    if not method.trains:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if method.keeps_adapter:
            model.save_pretrained(tmp, save_embedding_layers=False)  # as run.py saves it: no Hub lookup
            return (Path(tmp) / "adapter_model.safetensors").stat().st_size
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(Path(tmp) / "trained.safetensors"))
        return (Path(tmp) / "trained.safetensors").stat().st_size


def memory_mb(model: torch.nn.Module) -> tuple[float, str]:
    """Peak CUDA memory when on a GPU; on CPU the exact training state (weights+grads+2 Adam moments)."""
    device = model_device(model)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda-peak"
    trained = sum(p.numel() * p.element_size() for p in trainable_parameters(model))
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return (frozen + 4 * trained) / 2**20, "weights+grads+adam"
