"""Scores from K batches of the task, no optimizer step: gradients (taylor, gradient) or forward passes (activation).

Every score is a per-row statistic, negated where it is an importance so that lower = selected first (the
rows the task leans on most come first), as for the cosine score. Gradient scores hold at most one module's
weight gradient at a time: a ``register_post_accumulate_grad_hook`` reduces each target weight's gradient to
per-row statistics as soon as backward produces it and frees it; no other parameter gets a gradient.
Forward scores run under ``torch.no_grad``. The model's weights, flags, gradients and mode are put back.
Given a ``checkpoint_dir``, a scorer saves its running totals there every ``save_every`` batches and the same call
resumes from them (:mod:`peft_neft.selection.calibration_state`), with the scores of an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers.pytorch_utils import Conv1D

from .._shapes import count_params, module_shape, weight_rows
from .._targets import DEFAULT_TARGET_MODULES, TargetModules, find_target_modules
from ..tuner.fingerprint import model_fingerprint
from .calibration import _check_data, _training_state
from .calibration_state import DEFAULT_SAVE_EVERY, BatchState
from .neuron_scores import NeuronScores

Batch = dict[str, torch.Tensor]
RowStatistic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loader(dataset: Any, batch_size: int, seed: int, collate_fn: Callable) -> DataLoader:
    _check_data(dataset, batch_size)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn)


def _batches(loader: DataLoader, count: int, start: int = 0) -> Iterator[Batch]:
    """Batches ``start`` to ``count - 1``, cycling through the (reshuffled) data as often as needed; the first
    ``start`` are drawn from the seeded loader and dropped, so the rest are those of a run from batch 0."""
    produced = 0
    while produced < count:
        for batch in loader:
            if produced >= start:
                yield batch
            produced += 1
            if produced == count:
                return


def _state(scorer: str, targets: dict[str, nn.Module], model: nn.Module, checkpoint_dir: str | os.PathLike | None,
           save_every: int, **run: Any) -> BatchState:
    """Zero per-row totals of ``targets``, or those a checkpoint of the same run in ``checkpoint_dir`` holds."""
    totals = {n: torch.zeros(module_shape(m)[0], dtype=torch.float64) for n, m in targets.items()}
    run = {"scorer": scorer, **run, "targets": sorted(targets), "fingerprint": model_fingerprint(model)}
    return BatchState(checkpoint_dir, run, totals, save_every)


def _on_device(model: nn.Module, batch: Batch) -> Batch:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _scores(model: nn.Module, targets: dict[str, nn.Module], scores: dict[str, torch.Tensor], method: str,
            **metadata: Any) -> NeuronScores:
    return NeuronScores(
        scores=scores, in_features={name: module_shape(m)[1] for name, m in targets.items()},
        total_params=count_params(model), method=method,
        metadata={"fingerprint": model_fingerprint(model), "source": method, **metadata},
    )


def _gradient_rows(scorer: str, model: nn.Module, train_dataset: Any, statistic: RowStatistic, *, collate_fn: Callable,
                   batches: int, target_modules: TargetModules, batch_size: int, seed: int,
                   checkpoint_dir: str | os.PathLike | None,
                   save_every: int) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor], list[float]]:
    """``sum over batches of statistic(W, dL_b/dW)`` per target module (rows as (out, in)), and the batch losses.

    Each target weight's gradient is reduced by a post-accumulate-grad hook the moment backward has produced it,
    then set to None, so at most one module's weight gradient exists at a time. ``scorer`` names the run in its
    checkpoints (``checkpoint_dir``).
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}.")
    targets = find_target_modules(model, target_modules)
    loader = _loader(train_dataset, batch_size, seed, collate_fn)
    state = _state(scorer, targets, model, checkpoint_dir, save_every, batches=batches, batch_size=batch_size,
                   seed=seed)
    totals = state.totals

    def reducer(name: str, module: nn.Module) -> Callable[[torch.Tensor], None]:
        transposed = isinstance(module, Conv1D)

        def reduce(weight: torch.Tensor) -> None:
            grad = weight.grad.T if transposed else weight.grad
            totals[name] += statistic(weight_rows(module).detach(), grad).cpu()
            weight.grad = None

        return reduce

    handles = [m.weight.register_post_accumulate_grad_hook(reducer(name, m)) for name, m in targets.items()]
    try:
        with _training_state(model, {m.weight for m in targets.values()}, train_mode=False):
            for batch in _batches(loader, batches, state.done):
                loss = model(**_on_device(model, batch)).loss
                if loss is None:
                    raise ValueError("The model returned no loss; pass batches with 'labels' to a causal LM.")
                loss.backward()
                state.losses.append(float(loss.detach()))
                state.step()
    finally:
        for handle in handles:
            handle.remove()
    return targets, totals, state.losses


def gradient_scores(
    model: nn.Module,
    train_dataset: Any,
    *,
    collate_fn: Callable,
    batches: int = 16,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    batch_size: int = 8,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> NeuronScores:
    """Minus the accumulated row gradient norm, ``-sqrt(sum_b ||dL_b/dW_i||^2)``, over ``batches`` batches.

    Needs gradients only (no optimizer step, no optimizer state): the rows the task pulls hardest come first.
    ``checkpoint_dir`` (None: nothing is written): save the running totals there every ``save_every`` batches;
    a rerun with the same folder and settings resumes from them and gives the same scores.
    """
    targets, squared, losses = _gradient_rows(
        "gradient", model, train_dataset, lambda w, g: g.double().pow(2).sum(1), collate_fn=collate_fn,
        batches=batches, target_modules=target_modules, batch_size=batch_size, seed=seed,
        checkpoint_dir=checkpoint_dir, save_every=save_every)
    return _scores(model, targets, {name: -s.sqrt() for name, s in squared.items()}, "gradient", batches=batches,
                   batch_size=batch_size, seed=seed, losses=losses)


def taylor_scores(
    model: nn.Module,
    train_dataset: Any,
    *,
    collate_fn: Callable,
    batches: int = 16,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    batch_size: int = 8,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> NeuronScores:
    """Minus the first-order (Taylor) importance of each row, ``-sum_b |sum_j w_ij * dL_b/dw_ij|``.

    The first-order estimate of the loss change when row i is removed (Molchanov et al., 2019, "Importance
    Estimation for Neural Network Pruning", the structured-pruning criterion applied to a row's weights):
    absolute per batch, then summed over ``batches`` batches. Gradients only, no optimizer step.
    ``checkpoint_dir`` (None: nothing is written): save the running totals there every ``save_every`` batches;
    a rerun with the same folder and settings resumes from them and gives the same scores.
    """
    targets, importance, losses = _gradient_rows(
        "taylor", model, train_dataset, lambda w, g: (w.double() * g.double()).sum(1).abs(), collate_fn=collate_fn,
        batches=batches, target_modules=target_modules, batch_size=batch_size, seed=seed,
        checkpoint_dir=checkpoint_dir, save_every=save_every)
    return _scores(model, targets, {name: -s for name, s in importance.items()}, "taylor", batches=batches,
                   batch_size=batch_size, seed=seed, losses=losses)


def activation_scores(
    model: nn.Module,
    train_dataset: Any,
    *,
    collate_fn: Callable,
    batches: int = 16,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    batch_size: int = 8,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> NeuronScores:
    """Minus the mean absolute output of each row's unit, ``-mean over tokens of |y_i|``, over ``batches`` batches.

    ``y = W x`` is the module's output; the mean runs over every non-padding token (``attention_mask``) of the
    batches. The activation-magnitude criterion of pruning (e.g. Hu et al., 2016, "Network Trimming", the mean
    activation of a unit; Sun et al., 2024, "Wanda", weigh weights by input activations). Forward passes only.
    ``checkpoint_dir`` (None: nothing is written): save the running totals there every ``save_every`` batches;
    a rerun with the same folder and settings resumes from them and gives the same scores.
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}.")
    targets = find_target_modules(model, target_modules)
    loader = _loader(train_dataset, batch_size, seed, collate_fn)
    state = _state("activation", targets, model, checkpoint_dir, save_every, batches=batches, batch_size=batch_size,
                   seed=seed)
    sums = state.totals
    mask: list[torch.Tensor] = []  # the current batch's token mask, (batch, tokens, 1)

    def accumulate(name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            sums[name] += (output.detach().abs() * mask[0]).flatten(0, -2).sum(0, dtype=torch.float64).cpu()

        return hook

    handles = [m.register_forward_hook(accumulate(name)) for name, m in targets.items()]
    try:
        with _training_state(model, set(), train_mode=False), torch.no_grad():
            for batch in _batches(loader, batches, state.done):
                batch = _on_device(model, {k: v for k, v in batch.items() if k != "labels"})
                attention = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
                mask[:] = [attention.unsqueeze(-1).to(next(model.parameters()).dtype)]
                state.tokens += int(attention.sum())
                model(**batch)
                state.step()
    finally:
        for handle in handles:
            handle.remove()
    return _scores(model, targets, {name: -s / state.tokens for name, s in sums.items()}, "activation",
                   batches=batches, batch_size=batch_size, seed=seed, tokens=state.tokens)
