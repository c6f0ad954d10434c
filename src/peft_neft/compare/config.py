"""The settings that make two comparisons comparable; stored (resolved) in a results folder's identity."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._targets import DEFAULT_TARGET_MODULES
from ..tasks import TASKS
from ..training import TrainingSettings
from .methods import DEFAULT_LR


SAVE_ADAPTERS = ("best", "all", "none")


@dataclass
class CompareConfig:
    """Everything that makes two comparisons comparable (methods and seeds may grow between resumes)."""

    task: str = "translation"
    source_lang: str = "en"
    target_lang: str = "fr"
    max_steps: int = 100  # optimizer steps per run at most
    epochs: float | None = None  # passes over the training data at most (None: max_steps alone)
    patience: int | None = 3  # evaluations without a lower validation loss before a run stops (None: never)
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    eval_every: int = 25
    warmup_ratio: float = 0.1
    # kind -> lr; kinds left out take DEFAULT_LR. Stored resolved, so a folder never mixes two defaults.
    learning_rates: dict[str, float] = field(default_factory=dict)
    lr_grid: tuple[float, ...] = (1.0,)  # factors tried around each method's lr, chosen on validation loss
    calibration_steps: int = 50
    calibration_lr: float | None = None  # None: the lr of ``full``
    neft_target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    max_source_tokens: int = 256
    max_target_tokens: int = 128
    max_new_tokens: int = 64
    eval_batch_size: int = 16
    char_level: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:N (the resolved device is stored with the results)
    dtype: str = "auto"  # auto, float32, bfloat16 (the resolved dtype is stored with the results)
    report_to: str = "none"  # Trainer's report_to (not part of a folder's identity)
    workers: int = 1  # runs trained side by side in separate processes (results do not depend on it)
    checkpoint_dir: str | None = None  # where runs checkpoint while they train (None: OUT/checkpoints)
    save_adapters: str = "best"  # best: each method's best run on validation loss, all, or none

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
        if not self.lr_grid or any(f <= 0 for f in self.lr_grid):
            raise ValueError(f"lr_grid must hold positive factors, got {self.lr_grid}.")
        self.lr_grid = tuple(float(f) for f in self.lr_grid)
        self.learning_rates = {kind: float(self.learning_rates.get(kind, lr)) for kind, lr in DEFAULT_LR.items()}
        self.neft_target_modules = tuple(self.neft_target_modules)

    def lr(self, kind: str) -> float:
        return self.learning_rates[kind]

    def training(self) -> TrainingSettings:
        """The training-length and batching settings every method of the comparison runs with."""
        return TrainingSettings(
            max_steps=self.max_steps, epochs=self.epochs, batch_size=self.batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, warmup_ratio=self.warmup_ratio,
            eval_every=self.eval_every, patience=self.patience, eval_batch_size=self.eval_batch_size,
            report_to=self.report_to,
        )
