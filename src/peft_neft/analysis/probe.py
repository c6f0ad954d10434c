"""Probe-based neuron selection (paper section 3.1): ridge probes on mean-pooled hidden states.

For every target Linear layer, the hidden states that feed it (its input, i.e. the layer's hidden state
after the norm for ``up_proj``, the MLP activation for ``down_proj``) are averaged over each example's
tokens. A ridge classifier is fitted on them in closed form; its weight columns are the decision
directions, which live in the same space as the layer's weight rows. A neuron (row ``W[j]``) scores
``max_c |cos(W[j], w_c)|`` over the classes ``c``: how closely it reads the direction the probe uses to
tell the labels apart. :func:`probe_scores` returns :class:`~peft_neft.selection.NeuronScores` like every other
scorer: the score is ``-max_c |cos(W[j], w_c)|``, so lower means "select first" and
:func:`~peft_neft.selection.select_neurons` takes the best-aligned neurons over all modules under any budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Hashable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .._shapes import count_params, module_shape, weight_rows
from ..tuner.fingerprint import model_fingerprint
from .._targets import DEFAULT_TARGET_MODULES, TargetModules
from ..selection.neuron_scores import NeuronScores
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


def probe_scores(
    model: nn.Module,
    dataset: Inputs,
    labels: Sequence[Hashable],
    *,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    alpha: float = 1.0,
    batch_size: int = 8,
    max_length: int = 128,
    progress: bool = True,
) -> NeuronScores:
    """Score every neuron of the target modules by its alignment with per-layer ridge probes for ``labels``.

    ``dataset`` is a list of texts (with ``tokenizer``) or of token-id lists, ``labels`` one label per
    example (any hashable, at least two distinct). A neuron scores ``-max_c |cos(W[j], w_c)|`` (in [-1, 0];
    lower = better aligned = selected first). The metadata records the model's fingerprint, the classes
    and the probes' training accuracy per module. Select with :func:`~peft_neft.selection.select_neurons`,
    e.g. ``num_neurons=100_000`` as the paper does on Llama-2-7b.
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
    label_ids = torch.tensor([classes.index(label) for label in labels])
    features = mean_pooled_inputs(model, dataset, names, tokenizer, batch_size, max_length, progress)
    scores, accuracy = {}, {}
    for name in names:
        weights, bias = fit_ridge_classifier(features[name], label_ids, alpha)
        accuracy[name] = float(((features[name] @ weights + bias).argmax(1) == label_ids).float().mean())
        rows = weight_rows(modules[name]).detach().double().cpu()
        cosine = nn.functional.normalize(rows, dim=1) @ nn.functional.normalize(weights.double(), dim=0)
        scores[name] = -cosine.abs().max(dim=1).values
    return NeuronScores(
        scores=scores,
        in_features={name: module_shape(modules[name])[1] for name in names},
        total_params=count_params(model),
        method="probe",
        metadata={"fingerprint": model_fingerprint(model), "source": "probe", "alpha": alpha,
                  "classes": [str(c) for c in classes], "num_examples": len(dataset),
                  "probe_train_accuracy": accuracy},
    )
