"""The paper's short calibration fine-tune, and the data and training-state helpers scores on task data share.

:func:`calibrate` is Algorithm 1, lines 1-2: train all parameters for K steps (the paper's M_FT;
its "Early" ablation stops at 800 steps), score each neuron by the cosine similarity of its row
before and after (or by its movement, from the same run), and put the model back as it was.
The fine-tune is a ``transformers.Trainer`` run (:class:`~peft_neft.training.TargetLossTrainer`) and the
scores are those of :class:`~peft_neft.selection.calibration_callback.NeuronCalibrationCallback`, the callback
you can add to your own training. Only the target modules' rows are kept in memory; the other trained parameters
are parked in a temporary safetensors file and streamed back, so the model never exists twice in RAM. Given a
``checkpoint_dir``, the fine-tune checkpoints there through Trainer and the same call resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, overload

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .._shapes import weight_rows
from .._targets import DEFAULT_TARGET_MODULES
from .._targets import TargetModules, find_target_modules
from ..atomic import atomic_path
from ..tuner.fingerprint import model_fingerprint
from .budget import Budget
from .neuron_selection import NeuronSelection
from .calibration_callback import NeuronCalibrationCallback
from .calibration_state import DEFAULT_SAVE_EVERY, LOSSES_FILE, check_save_every, claim_folder, resumable_checkpoint
from .neuron_scores import NeuronScores

logger = logging.getLogger(__name__)


def _check_data(dataset: Any, batch_size: int) -> None:
    if len(dataset) == 0:
        raise ValueError("The training data set is empty.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")


class _StepLosses(TrainerCallback):
    """Calls ``callback(step, loss)`` after each optimizer step, while the model holds the fine-tuned weights.

    The step losses so far go into every checkpoint (:data:`LOSSES_FILE`, written last: the checkpoint is complete);
    none is saved at step ``steps`` or later, since a run resumed there would not score.
    """

    def __init__(self, callback: Optional[Callable[[int, float], None]], steps: int, losses: list[float]) -> None:
        self.callback, self.steps, self.losses = callback, steps, losses

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_save = False
        if self.callback is not None:
            self.callback(state.global_step, self.losses[-1])

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if folder.is_dir():
            with atomic_path(folder / LOSSES_FILE) as tmp:
                tmp.write_text(json.dumps(self.losses))


def _loss_recording(trainer_class: type, losses: list[float]) -> type:
    """``trainer_class`` appending the loss of every training step to ``losses``."""

    class LossRecording(trainer_class):
        def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            loss = super().training_step(*args, **kwargs)
            losses.append(float(loss))
            return loss

    return LossRecording


@contextmanager
def _random_state_kept() -> Iterator[None]:
    """Put back the CPU random states of torch, Python and NumPy that ``Trainer``'s ``set_seed`` changes."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextmanager
def _training_state(model: nn.Module, trainable: set[nn.Parameter], train_mode: bool) -> Iterator[None]:
    """Make exactly ``trainable`` require grad (and set train/eval mode); restore flags, mode and grads afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(p in trainable)
            p.grad = None
        model.train(train_mode)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = grads[p]
        model.train(was_training)


@overload
def calibrate(model: nn.Module, train_dataset: Any, *, collate_fn: Callable, steps: int = ...,
              target_modules: TargetModules = ..., lr: float = ..., batch_size: int = ..., seed: int = ...,
              frugal: bool = ..., progress: bool = ..., callback: Optional[Callable[[int, float], None]] = ...,
              budget: None = ..., strategy: str = ..., spread: str = ..., method: str = ...,
              checkpoint_dir: str | os.PathLike | None = ..., save_every: int = ...) -> NeuronScores: ...


@overload
def calibrate(model: nn.Module, train_dataset: Any, *, collate_fn: Callable, steps: int = ...,
              target_modules: TargetModules = ..., lr: float = ..., batch_size: int = ..., seed: int = ...,
              frugal: bool = ..., progress: bool = ..., callback: Optional[Callable[[int, float], None]] = ...,
              budget: Budget, strategy: str = ..., spread: str = ..., method: str = ...,
              checkpoint_dir: str | os.PathLike | None = ..., save_every: int = ...) -> NeuronSelection: ...


def calibrate(
    model: nn.Module,
    train_dataset: Any,
    *,
    collate_fn: Callable,
    steps: int = 800,
    target_modules: TargetModules = DEFAULT_TARGET_MODULES,
    lr: float = 1e-5,
    batch_size: int = 8,
    seed: int = 0,
    frugal: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[int, float], None]] = None,
    budget: Optional[Budget] = None,
    strategy: str = "lowest",
    spread: str = "global",
    method: str = "cosine",
    checkpoint_dir: str | os.PathLike | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> NeuronScores | NeuronSelection:
    """Row-change scores from a short full fine-tune (``Trainer``, AdamW, ``steps`` steps); the model is restored.

    Args:
        model: a transformers causal LM (or a peft model around one).
        train_dataset: a sequence (or ``datasets.Dataset``) of dicts with ``input_ids``, ``attention_mask``
            and ``labels`` (-100 on prompt tokens), as :func:`peft_neft.tasks.encode_pairs` makes them.
        collate_fn: turns a list of examples into a batch, e.g. :func:`peft_neft.tasks.make_collator`.
        steps: optimizer steps K (the paper's "Early" selection used 800).
        target_modules: modules whose rows are scored (peft's matching rule).
        lr, batch_size: learning rate (constant, no warmup) and batch size; torch's AdamW with its defaults
            (weight decay 0.01 on every trained tensor), no gradient clipping.
        seed: fixes the data order and anything random in the model, so runs repeat exactly (and seeds the
            ``"random"`` strategy).
        frugal: train only the target modules (less optimizer memory, no parking of the other weights).
        progress: show the Trainer's progress bar.
        callback: called as ``callback(step, loss)`` after each optimizer step (1-based), while the
            model holds the fine-tuned weights (e.g. to log, or to score intermediate steps).
        method: ``"cosine"`` (the paper's Eq. 1) or ``"movement"`` (minus the norm of each row's change), see
            :data:`~peft_neft.selection.cosine.ROW_CHANGES`.
        budget, strategy, spread: given a :class:`~peft_neft.selection.budget.Budget`, the scores are
            turned into a selection at step K (an impossible budget fails before the fine-tune) and that
            :class:`~peft_neft.selection.NeuronSelection` is returned instead of the scores (its ``scores``
            and ``metadata["scores_metadata"]`` keep them).
        checkpoint_dir: None (the default) writes nothing. A folder: Trainer checkpoints the fine-tune there every
            ``save_every`` steps before step K (weights, optimizer, scheduler and random states; only the newest
            is kept), and a rerun with the same folder, model and settings resumes from it and gives the scores
            of an uninterrupted run. The rows are compared with those of ``model`` as passed in (the base
            weights), never with a checkpoint's. A folder of another calibration is refused.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    check_save_every(save_every)
    from ..training.trainer import TargetLossTrainer, quiet  # lazy: transformers' Trainer is a heavy import
    from transformers import TrainingArguments

    targets = find_target_modules(model, target_modules)
    target_weights = {m.weight for m in targets.values()}
    trainable = target_weights if frugal else {p for p in model.parameters() if p.is_floating_point()}
    _check_data(train_dataset, batch_size)
    others = {n: p for n, p in model.named_parameters() if p in trainable and p not in target_weights}
    device = next(model.parameters()).device
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # Trainer trains on the current device
    resume, losses = None, []
    if checkpoint_dir is not None:
        claim_folder(checkpoint_dir, {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
                                      "frugal": frugal, "targets": sorted(targets),
                                      "fingerprint": model_fingerprint(model)})
        resume = resumable_checkpoint(checkpoint_dir)
        if resume is not None:
            losses = json.loads((resume / LOSSES_FILE).read_text())
            logger.info("calibration: resumed from %s after %d of %d steps", resume, len(losses), steps)
    original = {name: weight_rows(m).detach().clone() for name, m in targets.items()}  # before a resume loads
    scoring = NeuronCalibrationCallback(steps, budget=budget, strategy=strategy, seed=seed,
                                        spread=spread, method=method, target_modules=target_modules,
                                        stop_training=True, keep_original=True, original_rows=original)
    del original
    steps_seen = _StepLosses(callback, steps, losses)
    with tempfile.TemporaryDirectory(prefix="peft-neft-calibrate-") as tmp, _random_state_kept():
        parked = os.path.join(tmp, "parked.safetensors")
        if others:
            save_file({n: p.detach().cpu().contiguous() for n, p in others.items()}, parked)
        try:
            with _training_state(model, trainable, train_mode=True):
                args = TrainingArguments(
                    output_dir=os.fspath(checkpoint_dir or tmp), max_steps=steps,
                    per_device_train_batch_size=batch_size, learning_rate=lr, lr_scheduler_type="constant",
                    warmup_steps=0, max_grad_norm=0.0, save_strategy="no" if checkpoint_dir is None else "steps",
                    save_steps=save_every, save_total_limit=1, save_only_model=False, logging_strategy="no",
                    report_to="none", disable_tqdm=not progress, use_cpu=device.type == "cpu", seed=seed,
                    data_seed=seed, remove_unused_columns=False, dataloader_num_workers=0,
                    train_sampling_strategy="random",
                )
                optimizer = torch.optim.AdamW([p for p in model.parameters() if p in trainable], lr=lr)
                trainer = _loss_recording(TargetLossTrainer, steps_seen.losses)(
                    model=model, args=args, train_dataset=train_dataset, data_collator=collate_fn,
                    callbacks=[scoring, steps_seen], optimizers=(optimizer, None), data_seed=seed,
                )
                quiet(trainer, progress).train(resume_from_checkpoint=os.fspath(resume) if resume else None)
                del trainer, optimizer
        finally:
            scoring.restore_original(model)
            if others:
                with torch.no_grad(), safe_open(parked, framework="pt") as handle:
                    for n, p in others.items():
                        p.copy_(handle.get_tensor(n))
    scores = scoring.scores
    scores.metadata.update(source="calibrate", lr=lr, batch_size=batch_size, seed=seed, frugal=frugal,
                           losses=steps_seen.losses)
    if scoring.selection is None:
        return scores
    scoring.selection.metadata["scores_metadata"] = scores.metadata
    return scoring.selection
