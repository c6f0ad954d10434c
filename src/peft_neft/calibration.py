"""Scores that need the task's data: the paper's short calibration fine-tune, and a cheaper gradient score.

:func:`calibrate` is Algorithm 1, lines 1-2: train all parameters for K steps (the paper's M_FT;
its "Early" ablation stops at 800 steps), score each neuron by the cosine similarity of its row
before and after, and put the model back as it was. Only the target modules' weights are kept in
memory; the other trained parameters are parked in a temporary safetensors file and streamed back,
so the model never exists twice in RAM.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from ._shapes import count_params, model_fingerprint, module_shape, weight_rows
from ._targets import DEFAULT_TARGET_MODULES
from ._targets import TargetModules, find_target_modules
from .selection.cosine import cosine_rows
from .selection.neuron_scores import NeuronScores

Batch = dict[str, torch.Tensor]


def tokenize_pair(tokenizer: Any, prompt: str, completion: str, max_length: Optional[int] = None) -> dict[str, list[int]]:
    """Token ids of ``prompt + completion + eos`` with labels -100 on the prompt (loss on the completion only)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + completion_ids)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def pad_collate(pad_token_id: int) -> Callable[[Sequence[dict[str, Any]]], Batch]:
    """A collate function that right-pads ``input_ids`` (with ``pad_token_id``), ``attention_mask`` (0) and ``labels`` (-100)."""

    def collate(examples: Sequence[dict[str, Any]]) -> Batch:
        for key in ("input_ids", "attention_mask", "labels"):
            if key not in examples[0]:
                raise ValueError(
                    f"Training examples need 'input_ids', 'attention_mask' and 'labels' (missing {key!r}); "
                    "tokenize them first, e.g. with peft_neft.calibration.tokenize_pair."
                )
        length = max(len(e["input_ids"]) for e in examples)
        pads = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100}
        return {
            key: torch.tensor([list(e[key]) + [pad] * (length - len(e[key])) for e in examples], dtype=torch.long)
            for key, pad in pads.items()
        }

    return collate


def _loader(model: nn.Module, dataset: Any, batch_size: int, seed: int, collate_fn: Optional[Callable]) -> DataLoader:
    if len(dataset) == 0:
        raise ValueError("The training data set is empty.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    collate = collate_fn or pad_collate(0 if pad is None else int(pad))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)


def _batches(loader: DataLoader, count: int) -> Iterator[Batch]:
    """``count`` batches, cycling through the (reshuffled) data as often as needed."""
    produced = 0
    while produced < count:
        for batch in loader:
            yield batch
            produced += 1
            if produced == count:
                return


def _loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    device = next(model.parameters()).device
    output = model(**{k: v.to(device) for k, v in batch.items()})
    if output.loss is None:
        raise ValueError("The model returned no loss; pass batches with 'labels' to a causal LM.")
    return output.loss


@contextmanager
def _training_state(model: nn.Module, trainable: set[nn.Parameter], train_mode: bool) -> Iterator[None]:
    """Make exactly ``trainable`` require grad (and set train/eval mode); restore flags, mode and grads afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(p in trainable)
            p.grad = None
        model.train(train_mode)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = grads[p]
        model.train(was_training)


def calibrate(
    model: nn.Module,
    train_dataset: Any,
    steps: int = 800,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    lr: float = 1e-5,
    batch_size: int = 8,
    seed: int = 0,
    frugal: bool = False,
    collate_fn: Optional[Callable] = None,
    progress: bool = True,
    callback: Optional[Callable[[int, float], None]] = None,
) -> NeuronScores:
    """Cosine scores from a short full fine-tune (AdamW, ``steps`` steps); the model is restored in place.

    Args:
        model: a causal LM returning ``.loss`` when given ``labels``.
        train_dataset: a sequence (or ``datasets.Dataset``) of dicts with ``input_ids``, ``attention_mask``
            and ``labels`` (-100 on prompt tokens); see :func:`tokenize_pair`.
        steps: optimizer steps K (the paper's "Early" selection used 800).
        target_modules: modules whose rows are scored (peft's matching rule).
        lr, batch_size: AdamW learning rate and batch size.
        seed: fixes the data order and anything random in the model, so runs repeat exactly.
        frugal: train only the target modules (less optimizer memory, no parking of the other weights).
        collate_fn: turns a list of examples into a batch; default pads with ``model.config.pad_token_id`` (or 0).
        progress: show a tqdm progress bar.
        callback: called as ``callback(step, loss)`` after each optimizer step (1-based), while the
            model holds the fine-tuned weights (e.g. to log, or to score intermediate steps).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    targets = find_target_modules(model, target_modules)
    target_weights = {m.weight for m in targets.values()}
    trainable = target_weights if frugal else {p for p in model.parameters() if p.is_floating_point()}
    loader = _loader(model, train_dataset, batch_size, seed, collate_fn)
    snapshot = {name: weight_rows(m).detach().clone() for name, m in targets.items()}
    others = {n: p for n, p in model.named_parameters() if p in trainable and p not in target_weights}
    fingerprint, total = model_fingerprint(model), count_params(model)
    with tempfile.TemporaryDirectory(prefix="peft-neft-calibrate-") as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parked = os.path.join(tmp, "parked.safetensors")
        if others:
            save_file({n: p.detach().cpu().contiguous() for n, p in others.items()}, parked)
        losses = []
        try:
            with _training_state(model, trainable, train_mode=True):
                optimizer = torch.optim.AdamW([p for p in model.parameters() if p in trainable], lr=lr)
                for batch in tqdm(_batches(loader, steps), total=steps, desc="calibrate", disable=not progress):
                    loss = _loss(model, batch)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
                    if callback is not None:
                        callback(len(losses), losses[-1])
                del optimizer
            scores = {name: cosine_rows(snapshot[name], weight_rows(m)) for name, m in targets.items()}
        finally:
            with torch.no_grad():
                for name, m in targets.items():
                    weight_rows(m).copy_(snapshot[name])
                if others:
                    with safe_open(parked, framework="pt") as handle:
                        for n, p in others.items():
                            p.copy_(handle.get_tensor(n))
    return NeuronScores(
        scores=scores,
        in_features={name: module_shape(m)[1] for name, m in targets.items()},
        total_params=total,
        method="cosine",
        metadata={"fingerprint": fingerprint, "source": "calibrate", "steps": steps, "lr": lr,
                  "batch_size": batch_size, "seed": seed, "frugal": frugal, "losses": losses},
    )


def gradient_scores(
    model: nn.Module,
    train_dataset: Any,
    batches: int = 16,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    batch_size: int = 8,
    seed: int = 0,
    collate_fn: Optional[Callable] = None,
) -> NeuronScores:
    """A cheap score without any optimizer step: minus the accumulated per-row gradient norm.

    For each target row, ``sqrt(sum over batches of ||dL/dW_row||^2)`` over ``batches`` batches of
    the task; the score is its negative, so "lower = select first" holds as for cosine scores and
    the rows the task pulls hardest are selected first. The model's weights are never changed;
    only the target weights get gradients (the rest of the graph is still back-propagated).
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}.")
    targets = find_target_modules(model, target_modules)
    loader = _loader(model, train_dataset, batch_size, seed, collate_fn)
    squared = {name: torch.zeros(module_shape(m)[0], dtype=torch.float64) for name, m in targets.items()}
    losses = []
    with _training_state(model, {m.weight for m in targets.values()}, train_mode=False):
        for batch in _batches(loader, batches):
            loss = _loss(model, batch)
            loss.backward()
            for name, m in targets.items():
                grad = m.weight.grad.T if isinstance(m, Conv1D) else m.weight.grad
                squared[name] += grad.double().pow(2).sum(1).cpu()
                m.weight.grad = None
            losses.append(float(loss.detach()))
    return NeuronScores(
        scores={name: -s.sqrt() for name, s in squared.items()},
        in_features={name: module_shape(m)[1] for name, m in targets.items()},
        total_params=count_params(model),
        method="gradient",
        metadata={"fingerprint": model_fingerprint(model), "source": "gradient", "batches": batches,
                  "batch_size": batch_size, "seed": seed, "losses": losses},
    )
