"""The settings that make two comparisons comparable; stored (resolved) in a results folder's identity."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..settings import SAVE_ADAPTERS, CompareSettings
from ..tasks import TASKS
from ..training import TrainingSettings
from .methods import DEFAULT_LR


def _positive(value: object) -> bool:
    """Whether ``value`` is a finite real number above 0 (a rate or a factor)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass
class CompareConfig(CompareSettings):
    """Everything that makes two comparisons comparable (methods and seeds may grow between resumes), checked.

    The fields, their defaults and their help are :class:`~peft_neft.settings.CompareSettings`'.
    """

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Unknown task {self.task!r}; use one of {sorted(TASKS)}.")
        for name in ("max_new_tokens", "eval_batch_size", "calibration_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        self.training()  # checks the training settings
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}.")
        if self.save_adapters not in SAVE_ADAPTERS:
            raise ValueError(f"save_adapters must be one of {', '.join(SAVE_ADAPTERS)}, got {self.save_adapters!r}.")
        unknown = set(self.learning_rates) - set(DEFAULT_LR)
        if unknown:
            raise ValueError(f"Learning rates given for unknown method kinds {sorted(unknown)}; kinds: {sorted(DEFAULT_LR)}.")
        if not self.lr_grid or not all(_positive(f) for f in self.lr_grid):
            raise ValueError(f"lr_grid must hold finite factors above 0, got {self.lr_grid}.")
        for kind, lr in self.learning_rates.items():
            if not _positive(lr):
                raise ValueError(f"The learning rate of {kind} must be a finite number above 0, got {lr!r} "
                                 f"(--lr {kind}=...).")
        if self.calibration_lr is not None and not _positive(self.calibration_lr):
            raise ValueError(f"calibration_lr must be a finite number above 0, got {self.calibration_lr!r}.")
        empty = [name for name, file in self.stored_calibrations.items() if not str(file).strip()]
        if empty:
            raise ValueError(f"The stored calibration(s) {empty} name no file; give NAME=FILE (--stored-calibration).")
        self.stored_calibrations = {name.strip().lower(): str(file) for name, file in self.stored_calibrations.items()}
        self.lr_grid = tuple(float(f) for f in self.lr_grid)
        self.learning_rates = {kind: float(self.learning_rates.get(kind, lr)) for kind, lr in DEFAULT_LR.items()}
        self.neft_target_modules = tuple(self.neft_target_modules)
        self.lora_target_modules = tuple(self.lora_target_modules)

    def lr(self, kind: str) -> float:
        return self.learning_rates[kind]

    def training(self) -> TrainingSettings:
        """The training-length and batching settings every method of the comparison runs with."""
        return TrainingSettings(
            max_steps=self.max_steps, epochs=self.epochs, batch_size=self.batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay,
            eval_every=self.eval_every, patience=self.patience, eval_batch_size=self.eval_batch_size,
            report_to=self.report_to,
        )
