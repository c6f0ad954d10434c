"""Per-neuron Pearson scores of two models over the same inputs, collected with forward hooks.

A *neuron* is an output row of a Linear layer (the paper's definition, section 4.2); its *activation*
on a token is that row's output. Two readings of the paper's "Pearson correlation ... for each neuron,
recording the highest value per neuron" (section 6.1) are offered through ``correlate_with``:

``"layer_output"`` (default)
    Within each model, correlate the neuron's activation with every dimension of the hidden state
    that its decoder layer outputs, over all non-padding tokens, and keep the highest coefficient.
    It scores how strongly the neuron shows up in the layer's hidden state, in each model on its
    own, which is what a per-model Rank and a ΔRank between two models need.
``"other_model"``
    Correlate the neuron's activation in one model with the activations of every neuron of the same
    module in the other model, and keep the highest coefficient (a "pairwise" score, as the caption of
    the paper's Figure 3 words it): how well the neuron still has a counterpart in the other model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .._shapes import module_shape
from .._targets import (DEFAULT_TARGET_MODULES, TargetModules, block_name, find_target_modules, is_row_module,
                        layer_index)
from .inputs import Inputs, batches, tokenize
from .streaming import StreamingPearson

CorrelateWith = Literal["layer_output", "other_model"]


@dataclass
class PearsonScores:
    """Highest Pearson coefficient per neuron in model A and model B, neurons in module order.

    ``layers`` holds each module's decoder-block index, -1 for a module outside the numbered blocks.
    """

    modules: list[str]
    sizes: list[int]
    layers: list[int]
    scores_a: torch.Tensor
    scores_b: torch.Tensor
    correlate_with: str
    num_tokens: int

    def offsets(self) -> dict[str, int]:
        """Index of each module's first neuron in the flat score vectors."""
        starts = torch.tensor([0, *self.sizes]).cumsum(0).tolist()
        return dict(zip(self.modules, starts))


def analysed_modules(model: nn.Module, target_modules: TargetModules, extra: Sequence[str] = ()) -> list[str]:
    """Names of the Linear/Conv1D layers ``target_modules`` matches (peft's rule) plus ``extra``, in model order."""
    _reject_peft_model(model)
    targets = find_target_modules(model, target_modules)
    return [n for n, m in model.named_modules() if n in targets or (n in extra and is_row_module(m))]


def _reject_peft_model(model: nn.Module) -> None:
    if hasattr(model, "peft_config"):
        raise TypeError(
            "The analysis needs plain transformers models; got a peft model. Call model.merge_and_unload() first."
        )


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise a ValueError naming the first difference if the two models are not the same architecture."""
    _reject_peft_model(model_a)
    _reject_peft_model(model_b)
    hint = "The analysis compares two versions of one architecture (e.g. a base model and its fine-tuned copy)."
    if type(model_a) is not type(model_b):
        raise ValueError(f"model_a is a {type(model_a).__name__} but model_b is a {type(model_b).__name__}. {hint}")
    shapes_a = {n: tuple(p.shape) for n, p in model_a.named_parameters()}
    shapes_b = {n: tuple(p.shape) for n, p in model_b.named_parameters()}
    only = sorted(set(shapes_a) ^ set(shapes_b))
    if only:
        raise ValueError(f"The models have different layers, e.g. {only[:3]} is only in one of them. {hint}")
    differ = [n for n in shapes_a if shapes_a[n] != shapes_b[n]]
    if differ:
        name = differ[0]
        raise ValueError(
            f"The models differ in shape: {name} is {shapes_a[name]} in model_a and {shapes_b[name]} in model_b. {hint}"
        )


class _Recorder:
    """Forward hooks that keep the non-padding token rows of the outputs of the named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.mask: Optional[torch.Tensor] = None
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            if self.mask is None:  # another recorder's forward (model_a may be model_b)
                return
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            self.outputs[name] = tensor.detach()[self.mask].float()

        return hook

    def run(self, model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        self.mask = mask.bool().to(device)
        self.outputs = {}
        try:
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
        finally:
            self.mask = None
        return {name: t.cpu() for name, t in self.outputs.items()}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _layer_container(module_name: str) -> str:
    container = block_name(module_name)
    if container is None:
        raise ValueError(
            f"Module {module_name!r} is not inside a numbered decoder layer, so correlate_with='layer_output' has "
            "no layer hidden state for it. Use correlate_with='other_model' or leave it out of target_modules."
        )
    return container


@torch.inference_mode()
def neuron_pearson_scores(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Inputs,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    *,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    extra_modules: Sequence[str] = (),
    correlate_with: CorrelateWith = "layer_output",
    batch_size: int = 8,
    max_length: int = 128,
    progress: bool = True,
) -> PearsonScores:
    """Run both models over ``inputs`` and return each neuron's highest Pearson coefficient in each model.

    Activations are streamed into :class:`StreamingPearson` batch by batch, so memory does not grow with
    the number of inputs. Padding tokens are excluded. See the module docstring for ``correlate_with``.
    """
    if correlate_with not in ("layer_output", "other_model"):
        raise ValueError(f"correlate_with must be 'layer_output' or 'other_model', got {correlate_with!r}.")
    check_same_architecture(model_a, model_b)
    names = analysed_modules(model_a, target_modules, extra_modules)
    ids = tokenize(inputs, tokenizer, max_length)
    modules = dict(model_a.named_modules())
    sizes = [module_shape(modules[n])[0] for n in names]
    if correlate_with == "layer_output":
        containers = {n: _layer_container(n) for n in names}
        width = _hidden_width(model_a)
        stats_a = {n: StreamingPearson(s, width) for n, s in zip(names, sizes)}
        stats_b = {n: StreamingPearson(s, width) for n, s in zip(names, sizes)}
        recorded = list(names) + sorted(set(containers.values()))
    else:
        stats_a = {n: StreamingPearson(s, s) for n, s in zip(names, sizes)}
        recorded = list(names)
    recorder_a, recorder_b = _Recorder(model_a, recorded), _Recorder(model_b, recorded)
    was_training = (model_a.training, model_b.training)
    model_a.eval()
    model_b.eval()
    num_tokens = 0
    try:
        steps = (len(ids) + batch_size - 1) // batch_size
        for input_ids, mask in tqdm(batches(ids, batch_size), total=steps, desc="analyze", disable=not progress):
            out_a = recorder_a.run(model_a, input_ids, mask)
            out_b = recorder_b.run(model_b, input_ids, mask)
            num_tokens += int(mask.sum())
            for name in names:
                if correlate_with == "layer_output":
                    stats_a[name].update(out_a[name], out_a[containers[name]])
                    stats_b[name].update(out_b[name], out_b[containers[name]])
                else:
                    stats_a[name].update(out_a[name], out_b[name])
    finally:
        recorder_a.remove()
        recorder_b.remove()
        model_a.train(was_training[0])
        model_b.train(was_training[1])
    if num_tokens < 2:
        raise ValueError(f"The inputs hold {num_tokens} token(s); Pearson correlation needs at least 2.")
    scores_a, scores_b = [], []
    for name in names:
        if correlate_with == "layer_output":
            scores_a.append(stats_a[name].correlation().max(dim=1).values)
            scores_b.append(stats_b[name].correlation().max(dim=1).values)
        else:
            corr = stats_a[name].correlation()
            scores_a.append(corr.max(dim=1).values)
            scores_b.append(corr.max(dim=0).values)
    return PearsonScores(
        modules=names,
        sizes=sizes,
        layers=[-1 if layer_index(n) is None else layer_index(n) for n in names],
        scores_a=torch.cat(scores_a),
        scores_b=torch.cat(scores_b),
        correlate_with=correlate_with,
        num_tokens=num_tokens,
    )


def _hidden_width(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    width = getattr(config, "hidden_size", None)
    if width is None:
        raise ValueError("correlate_with='layer_output' needs model.config.hidden_size; use 'other_model'.")
    return int(width)
