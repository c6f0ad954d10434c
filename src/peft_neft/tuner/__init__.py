"""NeFT as a peft tuner, in peft's own layout: config, layer, model."""

from .config import NeFTConfig
from .layer import Linear, NeFTLayer
from .model import NeFTModel

__all__ = ["Linear", "NeFTConfig", "NeFTLayer", "NeFTModel"]
