"""Training engine: the target-only causal-LM loss and the comparison's Trainer-based runs."""

from .loss import causal_lm_target_loss

__all__ = ["causal_lm_target_loss"]
