"""One fine-tuning run on ``transformers.Trainer``, made fair for method comparisons.

What :func:`train_model` adds to a plain ``Trainer``:

- the data order comes from a generator seeded with ``seed`` alone, so every method (whatever it
  draws from the global RNG while it initialises) sees the same batches in the same order; batches
  group examples of similar length (``group_by_length``), which saves the compute spent on padding;
- the loss is :func:`~peft_neft.training.loss.causal_lm_target_loss` (LM head on labelled positions);
- validation loss every ``eval_every`` steps and at the last step; the trainable tensors of the best
  evaluation are kept in memory and restored at the end;
- with a ``checkpoint_dir``, a checkpoint at every evaluation (Trainer's own: trainable weights,
  optimizer, scheduler, RNG states; plus the best-so-far tensors and the evaluation history), so the
  same call after an interruption resumes from the last one and ends bit-identical to an
  uninterrupted run; a finished run leaves its result there and is not trained again;
- early stopping after ``patience`` evaluations without improvement, and the reason a run ended
  (``"plateau"`` or ``"max_steps"``) in the returned statistics;
- a run whose validation loss becomes non-finite stops there, ``"diverged"`` (with ``diverged_step``): its
  weights are no result.

Mixed precision, gradient accumulation, ``report_to`` and multi-process runs (``accelerate launch``,
``torchrun``) are ``Trainer``'s own.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import RandomSampler, Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import FINISHED, KEEP_BEST, load_state, remove_checkpoints, resumable_checkpoint, save_state
from .loss import causal_lm_target_loss
from .precision import Precision

logger = logging.getLogger(__name__)


@dataclass
class TrainingSettings:
    """How long and how a run trains; the same for every method of a comparison."""

    max_steps: int = 100  # optimizer steps at most
    epochs: float | None = None  # passes over the training data at most (None: no limit besides max_steps)
    batch_size: int = 8  # examples per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    warmup_ratio: float = 0.1  # linear warmup over this share of the steps, then linear decay
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    eval_every: int = 25  # validation loss every N optimizer steps (and at the last one)
    patience: int | None = 3  # stop after N evaluations without a lower validation loss (None: never)
    eval_batch_size: int = 16  # sequences per validation batch
    report_to: str = "none"  # Trainer's report_to: none, tensorboard, wandb, all, ...
    group_by_length: bool = True  # batches of similar lengths (less padding), still fixed by the seed alone

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 (or None), got {self.patience}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")

    def steps_for(self, num_examples: int) -> int:
        """Optimizer steps of a run on ``num_examples``: ``max_steps``, or fewer when ``epochs`` ends first."""
        if self.epochs is None:
            return self.max_steps
        per_step = self.batch_size * self.gradient_accumulation_steps
        return max(1, min(self.max_steps, math.ceil(self.epochs * num_examples / per_step)))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that will be trained, each once (tied weights are one parameter)."""
    return [p for p in model.parameters() if p.requires_grad]


class KeepBestCallback(TrainerCallback):
    """Keep the trainable tensors of the lowest validation loss in memory, stop at a plateau, restore at the end.

    With checkpointing on, each of Trainer's checkpoints gets this state too (:meth:`load` reads it back).
    """

    def __init__(self, params: Sequence[nn.Parameter], patience: int | None) -> None:
        self.params, self.patience = list(params), patience
        self.best_loss, self.best_step, self.best = math.inf, 0, None
        self.evaluations_since_best, self.stop_reason, self.diverged_step = 0, "max_steps", None
        self.curve: list[dict[str, float]] = []
        self.train_seconds, self._step_start = 0.0, 0.0
        self._last_train_loss: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.train_seconds += time.perf_counter() - self._step_start
        if state.global_step >= state.max_steps:
            control.should_evaluate = True  # the last step is always evaluated

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._last_train_loss = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = float(metrics["eval_loss"])
        self.curve.append({"step": state.global_step, "val_loss": loss, "train_loss": self._last_train_loss})
        if not math.isfinite(loss):
            self.stop_reason, self.diverged_step = "diverged", state.global_step
            control.should_training_stop = True
            logger.warning("step %d of %d: validation loss %s: the training diverged; stopped (lower its learning "
                           "rate, %g)", state.global_step, state.max_steps, loss, args.learning_rate)
            return
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.evaluations_since_best = loss, state.global_step, 0
            self.best = [p.detach().clone() for p in self.params]
        else:
            self.evaluations_since_best += 1
            if self.patience is not None and self.evaluations_since_best >= self.patience:
                control.should_training_stop = True
                self.stop_reason = "plateau"  # also when it coincides with the last step: the loss had flattened
        waiting = (f"; {self.evaluations_since_best} of {self.patience} evaluations without improvement"
                   if self.evaluations_since_best and self.patience is not None else "")
        logger.info("step %d of %d: validation loss %.4f (best %.4f at step %d%s)", state.global_step, state.max_steps,
                    loss, self.best_loss, self.best_step, waiting)

    def state(self) -> dict[str, Any]:
        """The evaluation history and counters (JSON), without the tensors."""
        return {"best_loss": self.best_loss, "best_step": self.best_step, "stop_reason": self.stop_reason,
                "diverged_step": self.diverged_step,
                "evaluations_since_best": self.evaluations_since_best, "curve": self.curve,
                "train_seconds": self.train_seconds, "last_train_loss": self._last_train_loss}

    def load(self, path: str | os.PathLike) -> None:
        """Restore what :meth:`on_save` wrote into a checkpoint."""
        tensors, state = load_state(path)
        self.best = tensors or None
        self.best_loss, self.best_step, self.stop_reason = state["best_loss"], state["best_step"], state["stop_reason"]
        self.diverged_step = state.get("diverged_step")
        self.evaluations_since_best, self.curve = state["evaluations_since_best"], state["curve"]
        self.train_seconds, self._last_train_loss = state["train_seconds"], state["last_train_loss"]

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        save_state(folder / KEEP_BEST, self.best, self.state())  # last: marks the checkpoint complete

    def on_train_end(self, args, state, control, **kwargs):
        if self.best is not None:
            with torch.no_grad():
                for p, saved in zip(self.params, self.best):
                    p.copy_(saved)


class _BarsOnly(ProgressCallback):
    """Trainer's progress bars without the log dictionaries it writes under them (logs go to ``report_to``)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class EpochSeededSampler(Sampler[int]):
    """A sampler whose order in epoch ``e`` depends on the seed and ``e`` alone (Trainer calls ``set_epoch``).

    Epoch ``e`` draws what a single generator seeded once would draw after ``e`` epochs, so a run resumed
    in a later epoch sees the batches of an uninterrupted one.
    """

    def __init__(self, make: Callable[[torch.Generator], Sampler[int]], seed: int, length: int) -> None:
        self.make, self.seed, self.length, self.epoch = make, seed, length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        sampler = self.make(torch.Generator().manual_seed(self.seed))
        for _ in range(self.epoch):
            for _ in sampler:
                pass
        return iter(sampler)


class TargetLossTrainer(Trainer):
    """``Trainer`` with the target-only loss, a data order fixed by the seed alone, and loss-only evaluation."""

    def __init__(self, *args: Any, data_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_seed = data_seed

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            lengths = [len(row["input_ids"]) for row in dataset]
            return EpochSeededSampler(lambda g: LengthGroupedSampler(batch, lengths=lengths, generator=g),
                                      self.data_seed, len(dataset))
        return EpochSeededSampler(lambda g: RandomSampler(dataset, generator=g), self.data_seed, len(dataset))

    def _get_eval_sampler(self, eval_dataset):
        # Validation batches of similar lengths: on the demo's Django messages 1.9x fewer tokens than random batches
        # of 16. transformers' length grouping groups only within random mega-batches of at least 4 batches, so a
        # set of a few batches gets random batches. The order is fixed by the rows alone, so every method (and every
        # resume) sees the same batches.
        if self.args.world_size > 1:
            return super()._get_eval_sampler(eval_dataset)
        rows = [eval_dataset[i]["input_ids"] for i in range(len(eval_dataset))]
        return sorted(range(len(rows)), key=lambda i: (len(rows[i]), list(rows[i])))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model is not self.accelerator.unwrap_model(model):
            # Wrapped for multi-process training: DDP needs its own forward, so Trainer's standard loss.
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # The decoder is called directly, not through model.forward where accelerate installs mixed precision's
        # autocast: the same autocast here, or float32 trained tensors meet bf16 frozen ones.
        with self.accelerator.autocast():
            loss = causal_lm_target_loss(model, inputs["input_ids"], inputs["labels"], inputs.get("attention_mask"),
                                         num_items_in_batch=num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def _arguments(settings: TrainingSettings, output_dir: str, *, steps: int, learning_rate: float, seed: int,
               precision: Precision, progress: bool, checkpoints: bool = False) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, learning_rate=learning_rate,
        weight_decay=settings.weight_decay, lr_scheduler_type="linear", warmup_steps=int(settings.warmup_ratio * steps),
        max_grad_norm=0.0, eval_strategy="steps", eval_steps=settings.eval_every, logging_steps=settings.eval_every,
        save_strategy="steps" if checkpoints else "no", save_steps=settings.eval_every, save_total_limit=2,
        report_to=settings.report_to, bf16=precision.dtype == torch.bfloat16,
        use_cpu=precision.device.type == "cpu", seed=seed, data_seed=seed, disable_tqdm=not progress,
        remove_unused_columns=False, prediction_loss_only=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
    )


def quiet(trainer: Trainer, progress: bool) -> Trainer:
    """``trainer`` printing nothing: only its progress bars when ``progress`` (a library logs, it does not print)."""
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    if progress:
        trainer.add_callback(_BarsOnly)
    return trainer


def _trainer(model: nn.Module, args: TrainingArguments, train_rows, val_rows, collator, callbacks, seed: int,
             progress: bool) -> TargetLossTrainer:
    trainer = TargetLossTrainer(model=model, args=args, train_dataset=list(train_rows) if train_rows else None,
                                eval_dataset=list(val_rows), data_collator=collator, callbacks=list(callbacks),
                                data_seed=seed)
    return quiet(trainer, progress)


def train_model(
    model: nn.Module,
    train_rows: Sequence[dict],
    val_rows: Sequence[dict],
    collator: Callable[[list[dict]], dict[str, torch.Tensor]],
    settings: TrainingSettings,
    *,
    learning_rate: float,
    seed: int,
    precision: Precision,
    checkpoint_dir: str | os.PathLike | None = None,
    logging_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train ``model`` (its trainable parameters) and leave it at its best-validation-loss checkpoint.

    ``precision`` is applied first (frozen weights in its dtype, trainable tensors float32, every forward
    under its autocast; :class:`~peft_neft.training.precision.Precision`). Returns the run's statistics:
    ``best_val_loss``, ``best_step``, ``steps_run``, ``max_steps``, ``stop_reason`` ("plateau", ``"max_steps"``
    or ``"diverged"``: the validation loss became non-finite at ``diverged_step``, so the run is no result),
    ``diverged_step`` (else None), ``train_seconds`` (optimizer steps only, no evaluation), ``time_per_step_s``,
    ``curve``.

    With ``checkpoint_dir``, Trainer checkpoints there at every evaluation and the same call resumes from the
    newest complete checkpoint; once finished, the folder holds only the result, which a later call loads
    instead of training again (the folder stands for this one run: give each run its own). ``logging_dir``
    is where ``report_to="tensorboard"`` writes its event files (default: Trainer's, under its output folder).
    """
    params = trainable_parameters(model)
    if not params:
        raise ValueError("Nothing to train: no parameter of the model requires grad.")
    if not train_rows or not val_rows:
        raise ValueError("Training and validation data must both be non-empty.")
    precision.apply(model)
    if precision.device.type == "cuda" and precision.device.index is not None:
        torch.cuda.set_device(precision.device)
    if checkpoint_dir is not None and Path(checkpoint_dir, FINISHED).is_file():
        logger.debug("%s holds a finished training: its result is loaded, not trained again", checkpoint_dir)
        return _finished(params, Path(checkpoint_dir))
    steps = settings.steps_for(len(train_rows))
    keep_best = KeepBestCallback(params, settings.patience)
    with tempfile.TemporaryDirectory(prefix="peft-neft-train-") as tmp:
        args = _arguments(settings, str(checkpoint_dir or tmp), steps=steps, learning_rate=learning_rate, seed=seed,
                          precision=precision, progress=progress, checkpoints=checkpoint_dir is not None)
        trainer = _trainer(model, args, train_rows, val_rows, collator, [keep_best, *callbacks], seed, progress)
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and logging_dir is not None:
                callback.logging_dir = str(logging_dir)
        resume = resumable_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
        if resume is not None:
            keep_best.load(resume / KEEP_BEST)
            logger.info("resuming from %s (step %s)", resume, resume.name.rpartition("-")[2])
        elif checkpoint_dir is not None:
            logger.debug("no complete checkpoint in %s: training from step 0", checkpoint_dir)
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    steps_run = trainer.state.global_step
    logger.info("trained %d of %d steps (%s); best validation loss %.4f at step %d", steps_run, steps,
                keep_best.stop_reason, keep_best.best_loss, keep_best.best_step)
    stats = {"best_val_loss": keep_best.best_loss, "best_step": keep_best.best_step, "steps_run": steps_run,
             "max_steps": steps, "stop_reason": keep_best.stop_reason, "diverged_step": keep_best.diverged_step,
             "train_seconds": keep_best.train_seconds,
             "time_per_step_s": keep_best.train_seconds / max(steps_run, 1), "curve": keep_best.curve}
    if checkpoint_dir is not None:
        save_state(Path(checkpoint_dir, FINISHED), params, stats)
        remove_checkpoints(checkpoint_dir)
    return stats


def _finished(params: Sequence[nn.Parameter], folder: Path) -> dict[str, Any]:
    """Load a finished run's best tensors into ``params`` and return its statistics."""
    tensors, stats = load_state(folder / FINISHED)
    if [tuple(t.shape) for t in tensors] != [tuple(p.shape) for p in params]:
        raise ValueError(f"{folder / FINISHED} holds tensors of another model; delete {folder} to train this run.")
    with torch.no_grad():
        for p, saved in zip(params, tensors):
            p.copy_(saved)
    logger.info("already trained: %s", folder)
    return stats


def validation_loss(model: nn.Module, val_rows: Sequence[dict], collator: Callable, settings: TrainingSettings, *,
                    precision: Precision, progress: bool = False) -> float:
    """The validation loss :func:`train_model` reports, for a model as it is (e.g. the untrained base)."""
    precision.apply(model)
    with tempfile.TemporaryDirectory(prefix="peft-neft-eval-") as tmp:
        args = _arguments(settings, tmp, steps=1, learning_rate=0.0, seed=0, precision=precision, progress=progress)
        return float(_trainer(model, args, None, val_rows, collator, [], 0, progress).evaluate()["eval_loss"])
