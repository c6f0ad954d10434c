"""Training engine: the precision policy, the target-only causal-LM loss and fair, resumable Trainer runs."""

from .loss import causal_lm_target_loss
from .precision import Precision
from .trainer import KeepBestCallback, TargetLossTrainer, TrainingSettings, train_model, validation_loss

__all__ = ["KeepBestCallback", "Precision", "TargetLossTrainer", "TrainingSettings", "causal_lm_target_loss", "train_model",
           "validation_loss"]
