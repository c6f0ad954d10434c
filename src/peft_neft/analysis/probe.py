"""Probe-based neuron selection (paper section 3.1): ridge probes on mean-pooled hidden states.

For every target Linear layer, the hidden states that feed it (its input, i.e. the layer's hidden state
after the norm for ``up_proj``, the MLP activation for ``down_proj``) are averaged over each example's
tokens. A ridge classifier is fitted on them in closed form; its weight columns are the decision
directions, which live in the same space as the layer's weight rows. A neuron (row ``W[j]``) scores
``max_c |cos(W[j], w_c)|`` over the classes ``c``: how closely it reads the direction the probe uses to
tell the labels apart. The highest-scoring neurons over all modules are selected, up to a neuron or parameter budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Hashable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .._shapes import module_shape, weight_rows
from .._targets import DEFAULT_TARGET_MODULES, TargetModules
from ..selection.neuron_selection import NeuronSelection
from .collect import analysed_modules
from .inputs import Inputs, batches, tokenize


def fit_ridge_classifier(features: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge classifier (one-vs-rest targets in {-1, +1}, intercept not penalised).

    ``features`` is (n, d), ``labels`` (n,) ints in [0, C). Returns ``(weights (d, C), bias (C,))``; the
    predicted class is ``argmax(features @ weights + bias)``. Solves the primal or the dual system,
    whichever is smaller.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}.")
    x = features.double()
    classes = int(labels.max()) + 1
    y = torch.full((x.shape[0], classes), -1.0, dtype=torch.float64)
    y[torch.arange(x.shape[0]), labels] = 1.0
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n, d = xc.shape
    if d <= n:
        weights = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(d, dtype=x.dtype), xc.T @ yc)
    else:
        weights = xc.T @ torch.linalg.solve(xc @ xc.T + alpha * torch.eye(n, dtype=x.dtype), yc)
    bias = y_mean - x_mean @ weights
    return weights.float(), bias.float()


@torch.inference_mode()
def mean_pooled_inputs(
    model: nn.Module,
    inputs: Inputs,
    module_names: Sequence[str],
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    batch_size: int = 8,
    max_length: int = 128,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Per module, the (n_examples, in_features) mean over each example's tokens of the module's input."""
    ids = tokenize(inputs, tokenizer, max_length)
    modules = dict(model.named_modules())
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in module_names}
    state: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args) -> None:
            mask = state["mask"].to(args[0].dtype)
            summed = (args[0].detach() * mask.unsqueeze(-1)).sum(1)
            pooled[name].append((summed / mask.sum(1, keepdim=True)).float().cpu())

        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in module_names]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        steps = (len(ids) + batch_size - 1) // batch_size
        for input_ids, mask in tqdm(batches(ids, batch_size), total=steps, desc="probe", disable=not progress):
            state["mask"] = mask.to(device)
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in pooled.items()}


def select_neurons_by_probe(
    model: nn.Module,
    dataset: Inputs,
    labels: Sequence[Hashable],
    num_neurons: Optional[int] = None,
    *,
    num_params: Optional[int] = None,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    alpha: float = 1.0,
    batch_size: int = 8,
    max_length: int = 128,
    progress: bool = True,
) -> NeuronSelection:
    """Select the neurons best aligned with per-layer ridge probes for ``labels``.

    The budget is either ``num_neurons`` (the paper selects 100,000 on Llama-2-7b) or ``num_params``:
    neurons are taken in score order while the parameters they cost (``in_features`` each) fit in it.
    ``dataset`` is a list of texts (with ``tokenizer``) or of token-id lists, ``labels`` one label per
    example (any hashable, at least two distinct). Scores of every neuron are kept in the selection;
    the metadata records the probes' training accuracy per module.
    """
    if len(dataset) == 0:
        raise ValueError("The probe dataset is empty: pass labelled examples.")
    if len(labels) != len(dataset):
        raise ValueError(f"Got {len(dataset)} examples but {len(labels)} labels; pass one label per example.")
    classes = sorted(set(labels), key=str)
    if len(classes) < 2:
        raise ValueError(f"The probe needs at least two distinct labels, got only {classes}.")
    names = analysed_modules(model, target_modules)
    modules = dict(model.named_modules())
    shapes = {n: module_shape(modules[n]) for n in names}
    total = sum(out_f for out_f, _ in shapes.values())
    if (num_neurons is None) == (num_params is None):
        raise ValueError("Pass exactly one budget: num_neurons=... or num_params=....")
    if num_neurons is not None and not 0 < num_neurons <= total:
        raise ValueError(f"num_neurons must lie in [1, {total}] (the neurons of the target modules), got {num_neurons}.")
    cost = torch.cat([torch.full((out_f,), in_f) for out_f, in_f in shapes.values()])
    if num_params is not None and num_params < int(cost.min()):
        raise ValueError(f"num_params={num_params} is below the cost of one neuron ({int(cost.min())} parameters).")
    label_ids = torch.tensor([classes.index(label) for label in labels])
    features = mean_pooled_inputs(model, dataset, names, tokenizer, batch_size, max_length, progress)
    scores, accuracy = {}, {}
    for name in names:
        weights, bias = fit_ridge_classifier(features[name], label_ids, alpha)
        accuracy[name] = float(((features[name] @ weights + bias).argmax(1) == label_ids).float().mean())
        rows = weight_rows(modules[name]).detach().float().cpu()
        cosine = nn.functional.normalize(rows, dim=1) @ nn.functional.normalize(weights, dim=0)
        scores[name] = cosine.abs().max(dim=1).values
    flat = torch.cat([scores[n] for n in names])
    order = torch.argsort(flat, descending=True, stable=True)
    if num_neurons is not None:
        order = order[:num_neurons]
    else:
        order = order[cost[order].cumsum(0) <= num_params]
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order] = True
    rows, start = {}, 0
    for name in names:
        picked = chosen[start:start + scores[name].numel()].nonzero().flatten()
        start += scores[name].numel()
        if picked.numel():
            rows[name] = picked
    metadata = {
        "method": "probe",
        "num_neurons": int(chosen.sum()),
        "num_params": int(cost[chosen].sum()),
        "alpha": alpha,
        "classes": [str(c) for c in classes],
        "num_examples": len(dataset),
        "probe_train_accuracy": accuracy,
        "shapes": {n: list(shape) for n, shape in shapes.items()},
    }
    return NeuronSelection(rows=rows, scores=scores, metadata=metadata)
