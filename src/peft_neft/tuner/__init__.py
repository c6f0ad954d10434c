"""NeFT as a peft tuner, in peft's own layout: config, layer, model, and (as in each of peft's tuner
packages) the registration with peft when the package is imported."""

from .config import NeFTConfig
from .layer import Linear, NeFTLayer
from .model import NeFTModel
from .registration import register

register()

__all__ = ["Linear", "NeFTConfig", "NeFTLayer", "NeFTModel"]
