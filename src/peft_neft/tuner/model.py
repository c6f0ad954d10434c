"""``NeFTModel``: the peft ``BaseTuner`` that swaps selected Linear layers for NeFT layers."""

from __future__ import annotations

from typing import Any, Optional

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, _get_in_out_features
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import PEFT_MODEL_PREFIX, NeFTConfig
from .fingerprint import model_fingerprint
from .layer import Linear, NeFTLayer

_TENSOR_NAMES = (".neft_delta", ".neft_rows")


def names_of_parameters(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter, by ``id``: a tied weight has several."""
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    return names_of


def refuse_tied_weight(name: str, base: nn.Module, names_of: dict[int, list[str]]) -> None:
    """Raise if ``base.weight`` is shared with a parameter outside module ``name``: a row merge would change both."""
    tied = [other for other in names_of.get(id(base.weight), []) if not other.startswith(f"{name}.")]
    if tied:
        raise ValueError(
            f"NeFT cannot adapt module {name!r}: its weight is tied to {tied[0]!r} (a shared parameter, as with "
            "tie_word_embeddings=True), so merging its rows would change that weight too. Untie it first: "
            f"`model.{name}.weight = torch.nn.Parameter(model.{name}.weight.detach().clone()); "
            f"model.config.tie_word_embeddings = False`, or remove {name!r} from the selection."
        )


def refuse_weight_read_by_parent(name: str, modules: dict[str, nn.Module]) -> None:
    """Raise for a Linear whose parent reads its ``.weight`` instead of calling it: a NeFT layer there never runs.

    ``nn.MultiheadAttention`` passes ``out_proj.weight`` to ``F.multi_head_attention_forward``, so the row update
    would change nothing and get no gradient until merged (peft's LoRA accepts it and trains nothing).
    """
    parent_name = name.rpartition(".")[0]
    parent = modules.get(parent_name)
    if isinstance(parent, nn.MultiheadAttention):
        raise ValueError(
            f"NeFT cannot adapt module {name!r}: its parent {parent_name or 'model'!r} is a "
            f"{type(parent).__name__}, which reads `{name.rpartition('.')[2]}.weight` directly instead of calling "
            "the module, so a NeFT layer there would never run: no effect on the output and no gradient. Remove "
            "it from the selection (select rows of the Linear layers around the attention instead)."
        )


class NeFTModel(BaseTuner):
    """
    Creates a NeFT (Neuron-Level Fine-Tuning) model from a pretrained transformers model.

    Each module named in the config's selection is wrapped in a NeFT [`Linear`] layer that adds a trainable delta
    to the selected output rows of the frozen weight. The method is described in
    https://arxiv.org/abs/2403.11621.

    Args:
        model ([`torch.nn.Module`]): The model to be adapted.
        config ([`NeFTConfig`]): The configuration of the NeFT model.
        adapter_name (`str`): The name of the adapter, defaults to `"default"`.

    Returns:
        `torch.nn.Module`: The NeFT model.

    Example:

        ```py
        >>> import peft_neft  # registers NeFT with peft
        >>> from peft import get_peft_model
        >>> from peft_neft import NeFTConfig

        >>> config = NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [3, 17, 512]})
        >>> model = get_peft_model(base_model, config)
        ```

    **Attributes**:
        - **model** ([`~transformers.PreTrainedModel`]) -- The model to be adapted.
        - **peft_config** ([`NeFTConfig`]): The configuration of the NeFT model.
    """

    prefix: str = "neft_"
    tuner_layer_cls = NeFTLayer
    # NeFT has no default targets: the neuron selection names the modules.
    target_module_mapping: dict[str, list[str]] = {}

    def _pre_injection_hook(self, model: nn.Module, config: NeFTConfig, adapter_name: str) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in config.neuron_counts if name not in modules]
        if missing:
            raise ValueError(
                f"The NeFT selection names {len(missing)} module(s) the model does not have, e.g. {missing[:3]}. "
                "Module names are relative to the base model (as in base_model.named_modules()); was the selection "
                "made for another model?"
            )
        names_of = names_of_parameters(model)
        shapes = {}
        for name in config.neuron_counts:
            base = modules[name].get_base_layer() if isinstance(modules[name], NeFTLayer) else modules[name]
            if not isinstance(base, (nn.Linear, Conv1D)):
                raise TypeError(
                    f"NeFT cannot adapt module {name!r} of type {type(base).__name__}: only torch.nn.Linear and "
                    "transformers' Conv1D are supported. Remove it from the selection."
                )
            refuse_tied_weight(name, base, names_of)
            refuse_weight_read_by_parent(name, modules)
            in_features, out_features = _get_in_out_features(base)
            shapes[name] = [int(out_features), int(in_features)]
        recorded = config.module_shapes or {}
        for name, shape in shapes.items():
            if name in recorded and list(recorded[name]) != shape:
                raise ValueError(
                    f"The adapter was made for module {name!r} with shape {tuple(recorded[name])} (out, in), but this "
                    f"base model's has {tuple(shape)}: load it onto the base model it was trained on."
                )
        config.module_shapes = shapes
        if config.neurons is not None and config.selection_fingerprint and not config.ignore_fingerprint:
            fingerprint = model_fingerprint(model)
            if fingerprint != config.selection_fingerprint:
                raise ValueError(
                    f"The neuron selection was made on a base model with other weight shapes (fingerprint "
                    f"{config.selection_fingerprint}, this model {fingerprint}). Select neurons on the model you "
                    "will train, or pass NeFTConfig(..., ignore_fingerprint=True) if the selection fits this model."
                )

    @staticmethod
    def _check_target_module_exists(peft_config: NeFTConfig, key: str) -> bool:
        """A module is adapted exactly when the selection names it (peft's suffix rule would also take
        ``sub.proj`` for a selected ``proj``)."""
        return key in peft_config.neuron_counts

    def _prepare_adapter_config(self, peft_config: NeFTConfig, model_config: dict) -> NeFTConfig:
        return peft_config

    def _create_and_replace(
        self,
        peft_config: NeFTConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        rows = peft_config.neurons[current_key] if peft_config.neurons is not None else None
        num_rows = peft_config.neuron_counts[current_key]
        init = {"init_weights": peft_config.init_weights, "init_seed": peft_config.init_seed}
        if isinstance(target, NeFTLayer):
            target.update_layer(adapter_name, rows, num_rows, peft_config.torch_delta_dtype, **init,
                                inference_mode=peft_config.inference_mode)
            return
        new_module = Linear(target, adapter_name, rows, num_rows, peft_config.torch_delta_dtype, **init,
                            module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: PeftConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """peft's key remapping, after checking that every NeFT tensor of the checkpoint belongs to a module the
        config declares: a module missing from ``neuron_counts`` would otherwise be dropped without a word."""
        declared = set(config.neuron_counts or {})
        for key in state_dict:
            module = next((key[: key.index(s)] for s in _TENSOR_NAMES if s in key), None)
            if module is not None and module.removeprefix(PEFT_MODEL_PREFIX) not in declared:
                raise ValueError(
                    f"The adapter checkpoint holds {key!r}, but adapter_config.json's neuron_counts has no entry for "
                    f"module {module.removeprefix(PEFT_MODEL_PREFIX)!r}: its trained delta would be dropped. The "
                    "adapter folder mixes files from different saves, or its config was edited; save it again."
                )
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter; if it was the active one, activate the first remaining adapter everywhere.

        peft takes the new active adapter from the first adapted layer it visits, which is empty when that
        layer only held the deleted adapter (adapters may cover different modules), so NeFT settles it here.
        """
        super().delete_adapter(adapter_name)
        if not self.active_adapters and self.peft_config:
            self.set_adapter(sorted(self.peft_config)[0])

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Settle the adapter's delta dtype once it is built or loaded (peft calls this on every path).

        An explicit ``delta_dtype`` wins; otherwise peft's contract: float32 with ``autocast_adapter_dtype``
        (float16/bfloat16 deltas upcast, as peft does), the base weight's dtype without. Only ever a cast of
        the loaded values, so float32 deltas loaded onto a bf16 base stay bit-exact.
        """
        explicit = self.peft_config[adapter_name].torch_delta_dtype
        for module in self.model.modules():
            if not isinstance(module, NeFTLayer) or adapter_name not in module.neft_delta:
                continue
            delta = module.neft_delta[adapter_name]
            if explicit is not None:
                dtype = explicit
            elif autocast_adapter_dtype:
                dtype = torch.float32 if delta.dtype in (torch.float16, torch.bfloat16) else delta.dtype
            else:
                dtype = module._base_float_dtype()
            if delta.dtype != dtype:
                module.neft_delta[adapter_name] = nn.Parameter(delta.to(dtype), requires_grad=delta.requires_grad)

    def _check_merge_allowed(self) -> None:
        super()._check_merge_allowed()
        names_of = names_of_parameters(self.model)
        for module in self.model.modules():
            if isinstance(module, NeFTLayer):
                module._weight_rows_view()  # raises a clear error for quantized weights
                refuse_tied_weight(module.module_name, module.get_base_layer(), names_of)  # tied after injection

    def _check_every_layer_merges(self, adapter_names: Optional[list[str]], safe_merge: bool) -> None:
        """Raise before any layer changes if one of them cannot merge (or, with ``safe_merge``, gives NaN/inf)."""
        for module in self.model.modules():
            if isinstance(module, NeFTLayer):
                names = adapter_names if adapter_names is not None else module.active_adapters
                module.merge_plan([n for n in names if n not in module.merged_adapters], safe_merge=safe_merge)

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        self._check_every_layer_merges(adapter_names, safe_merge)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: Optional[list[str]] = None) -> nn.Module:
        if merge:
            self._check_every_layer_merges(adapter_names, safe_merge)
        return super()._unload_and_optionally_merge(merge=merge, progressbar=progressbar, safe_merge=safe_merge,
                                                   adapter_names=adapter_names)

