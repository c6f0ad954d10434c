"""Training engine: the target-only causal-LM loss and fair, Trainer-based fine-tuning runs."""

from .loss import causal_lm_target_loss
from .trainer import KeepBestCallback, TargetLossTrainer, TrainingSettings, train_model, validation_loss

__all__ = ["KeepBestCallback", "TargetLossTrainer", "TrainingSettings", "causal_lm_target_loss", "train_model",
           "validation_loss"]
