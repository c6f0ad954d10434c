"""Which modules a ``target_modules`` value names: peft's matching rule, the default targets, block indices.

The one home of target matching for the tuner, the scorers and the analysis. Matching is peft's own
:func:`peft.tuners.tuners_utils.check_target_module_exists`: a string is a regex that must match the
full module name; a list entry matches the name itself or its last dotted parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:  # torch and transformers load on first use: the CLI's parser reads DEFAULT_TARGET_MODULES
    from torch import nn

TargetModules = Union[str, Sequence[str]]
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("up_proj", "down_proj")
"""The paper's targets: the MLP input and output projections of every decoder block."""


def is_row_module(module: nn.Module) -> bool:
    """Whether NeFT can select the output neurons (weight rows) of ``module``: a Linear or transformers' Conv1D."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))

_BLOCK_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass(frozen=True)
class _Targets:
    """The two fields of a peft config that :func:`check_target_module_exists` reads for plain matching."""

    target_modules: TargetModules
    target_parameters: None = None


def matches(target_modules: TargetModules, name: str) -> bool:
    """Whether peft would adapt module ``name`` for this ``target_modules`` value."""
    # Imported here: the tuner imports this module, and a first ``import peft`` while the tuner's own imports
    # are unfinished would register NeFT before its classes exist (see peft_neft._import_hook).
    from peft.tuners.tuners_utils import check_target_module_exists

    return bool(check_target_module_exists(_Targets(target_modules), name))


def layer_index(module_name: str) -> Optional[int]:
    """The decoder-block index in a module name (``model.layers.7.mlp.up_proj`` -> 7), None outside blocks."""
    match = _BLOCK_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def block_name(module_name: str) -> Optional[str]:
    """The name of the numbered block that holds a module (``model.layers.7.mlp.up_proj`` -> ``model.layers.7``)."""
    match = _BLOCK_INDEX.search(module_name)
    return module_name[: match.end(1)] if match else None


def row_module_names(named_modules: Iterable[tuple[str, nn.Module]]) -> list[str]:
    """The last name parts of the Linear/Conv1D modules, sorted: what a user can put in ``target_modules``."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in named_modules if is_row_module(m) and n})


def check_targets_found(target_modules: TargetModules, found: Iterable[str], available: list[str]) -> None:
    """Every list entry must match at least one of ``found``; a regex must match one of them."""
    found = list(found)
    entries = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not entries:
        raise ValueError("target_modules is empty; name at least one module, e.g. ['up_proj', 'down_proj'].")
    unknown = [t for t in entries if not any(matches(t if isinstance(target_modules, str) else [t], n) for n in found)]
    if unknown:
        raise ValueError(
            f"Unknown target modules {unknown}: no Linear/Conv1D module of the model matches. "
            f"The model's Linear layers are named {available}."
        )


def find_target_modules(model: nn.Module, target_modules: TargetModules) -> dict[str, nn.Module]:
    """The Linear/Conv1D modules ``target_modules`` matches, in model order; a clear error for unknown names."""
    found = {
        name: m for name, m in model.named_modules()
        if is_row_module(m) and name and matches(target_modules, name)
    }
    check_targets_found(target_modules, found, row_module_names(model.named_modules()))
    return found
