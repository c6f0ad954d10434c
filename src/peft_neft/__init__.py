"""peft-neft: Neuron-Level Fine-Tuning (NeFT) as a Hugging Face peft method.

Importing this package registers NeFT with peft, so ``get_peft_model(model, NeFTConfig(...))``,
``PeftModel.from_pretrained`` and the ``AutoPeftModel`` classes work as they do for LoRA.
(NeFT is unrelated to NEFTune, the noisy-embedding trick behind ``neftune_noise_alpha``.)

The import itself is cheap: the public names load on first use, and the registration runs as soon as
peft is imported (at once if it already is), as :mod:`peft_neft._import_hook` explains.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from ._import_hook import call_after_import
from ._lazy import lazy_exports
from ._version import __version__

if TYPE_CHECKING:
    from .adapters.export import export_lora, import_lora
    from .adapters.saving import save_pretrained_atomically
    from .selection import (Budget, NeuronCalibrationCallback, NeuronScores, NeuronSelection, budget_from_lora,
                            calibrate, gradient_scores, overlap, select_neurons)
    from .tuner import NeFTConfig, NeFTModel

_HOME = {
    "NeFTConfig": "tuner", "NeFTModel": "tuner", "save_pretrained_atomically": "adapters.saving",
    "export_lora": "adapters.export", "import_lora": "adapters.export",
    **dict.fromkeys(["Budget", "NeuronCalibrationCallback", "NeuronScores", "NeuronSelection", "budget_from_lora",
                     "calibrate", "gradient_scores", "overlap", "select_neurons"], "selection"),
}
__all__ = sorted([*_HOME, "__version__"])


__getattr__, __dir__ = lazy_exports(__name__, _HOME, globals())


def _on_config_save(folder: str, config) -> None:
    from .adapters.saving import on_config_save  # the card writer loads on the first save, not with peft

    on_config_save(folder, config)


def _register() -> None:
    """Register NeFT with peft (the tuner does on import), and have every NeFT save write its model card."""
    hooks = importlib.import_module(".tuner.hooks", __name__).SAVE_HOOKS  # complete even while peft loads
    importlib.import_module(".tuner", __name__)
    if _on_config_save not in hooks:
        hooks.append(_on_config_save)


call_after_import("peft", _register)
logging.getLogger(__name__).addHandler(logging.NullHandler())  # quiet unless the application sets up logging
