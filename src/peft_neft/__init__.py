"""peft-neft: Neuron-Level Fine-Tuning (NeFT) as a Hugging Face peft method.

Importing this package registers NeFT with peft, so ``get_peft_model(model, NeFTConfig(...))``,
``PeftModel.from_pretrained`` and the ``AutoPeftModel`` classes work as they do for LoRA.
(NeFT is unrelated to NEFTune, the noisy-embedding trick behind ``neftune_noise_alpha``.)
"""

import logging

from ._version import __version__
from .registration import register as _register
from .selection import (NeuronCalibrationCallback, NeuronScores, NeuronSelection, budget_from_lora, calibrate,
                        gradient_scores, overlap, select_neurons)
from .atomic import save_pretrained_atomically
from .export import export_lora, import_lora
from .tuner import NeFTConfig, NeFTModel

_register()
logging.getLogger(__name__).addHandler(logging.NullHandler())  # quiet unless the application sets up logging

__all__ = ["NeFTConfig", "NeFTModel", "NeuronCalibrationCallback", "NeuronScores", "NeuronSelection", "__version__",
           "budget_from_lora", "calibrate", "export_lora", "gradient_scores", "import_lora", "overlap",
           "save_pretrained_atomically", "select_neurons"]
