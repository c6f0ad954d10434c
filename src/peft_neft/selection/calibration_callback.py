"""Calibration inside your own training: a ``TrainerCallback`` that scores neurons after K steps.

Add :class:`NeuronCalibrationCallback` to the ``Trainer`` (or TRL ``SFTTrainer``) of a full fine-tune.
At the start of training it copies the rows of the target modules only (optionally in a smaller
dtype, e.g. bfloat16); after ``steps`` optimizer steps it scores every neuron by the cosine similarity
of its row before and after (the paper's Eq. 1, Algorithm 1 lines 1-2), frees the copy, and, given a
budget, selects neurons and writes the :class:`~peft_neft.selection.NeuronSelection`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import TrainerCallback

from .._shapes import count_params, module_shape, weight_rows
from .._targets import DEFAULT_TARGET_MODULES, TargetModules, find_target_modules
from ..tuner.fingerprint import model_fingerprint
from .neuron_selection import NeuronSelection
from .cosine import cosine_rows
from .neuron_scores import NeuronScores
from .select import select_neurons

logger = logging.getLogger(__name__)


class NeuronCalibrationCallback(TrainerCallback):
    """Score neurons after ``steps`` optimizer steps of the trainer's fine-tune; optionally select and save.

    Args:
        steps: optimizer steps K after which the rows are compared (the paper's "Early" ablation: 800).
        out: where to write the selection (``.safetensors``); needs ``budget``.
        budget: keyword arguments of :func:`~peft_neft.selection.select_neurons`, e.g. ``{"percent": 1}``
            or ``{"num_params": 2_000_000, "strategy": "lowest"}``.
        target_modules: modules whose rows are scored (peft's matching rule).
        snapshot_dtype: dtype of the kept original rows (default: the weights' own dtype).
        stop_training: end training once scored (a calibration-only run).
        keep_original: keep the copy of the rows after scoring, for :meth:`restore_original`.

    After step K, ``scores`` holds the :class:`~peft_neft.selection.NeuronScores` and
    ``selection`` the selection (when a budget was given).
    """

    def __init__(self, steps: int, out: str | os.PathLike | None = None, *, budget: dict[str, Any] | None = None,
                 target_modules: TargetModules = DEFAULT_TARGET_MODULES, snapshot_dtype: torch.dtype | None = None,
                 stop_training: bool = False, keep_original: bool = False) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        if out is not None and not budget:
            raise ValueError("A selection written to `out` needs a budget, e.g. budget={'percent': 1}.")
        self.steps, self.out, self.budget = steps, out, dict(budget or {})
        self.target_modules, self.snapshot_dtype, self.stop_training = target_modules, snapshot_dtype, stop_training
        self.keep_original = keep_original
        self.scores: NeuronScores | None = None
        self.selection: NeuronSelection | None = None
        self._original: dict[str, torch.Tensor] = {}
        self._info: dict[str, Any] = {}

    @staticmethod
    def _model(kwargs: dict[str, Any]) -> torch.nn.Module:
        model = kwargs.get("model")
        if model is None:
            raise ValueError("NeuronCalibrationCallback needs the trainer's model (transformers passes it as `model`).")
        return model

    def on_train_begin(self, args, state, control, **kwargs):
        model = self._model(kwargs)
        targets = find_target_modules(model, self.target_modules)
        self._original = {name: weight_rows(m).detach().to(dtype=self.snapshot_dtype or m.weight.dtype, copy=True)
                          for name, m in targets.items()}
        self._info = {"fingerprint": model_fingerprint(model), "total": count_params(model),
                      "in_features": {name: module_shape(m)[1] for name, m in targets.items()}}
        if self.budget:  # an impossible budget fails now, not after the fine-tune
            placeholder = {name: torch.linspace(0, 1, module_shape(m)[0], dtype=torch.float64)
                           for name, m in targets.items()}
            select_neurons(NeuronScores(scores=placeholder, in_features=self._info["in_features"],
                                        total_params=self._info["total"], method="cosine"), **self.budget)
        logger.info("calibration: kept the original rows of %d target modules; scoring after step %d",
                    len(targets), self.steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.steps or not self._original:
            return
        targets = find_target_modules(self._model(kwargs), self.target_modules)
        scores = {name: cosine_rows(self._original[name], weight_rows(m)) for name, m in targets.items()}
        if not self.keep_original:
            self._original = {}
        self.scores = NeuronScores(
            scores=scores, in_features=self._info["in_features"], total_params=self._info["total"], method="cosine",
            metadata={"fingerprint": self._info["fingerprint"], "source": "calibration-callback", "steps": self.steps,
                      "lr": args.learning_rate, "batch_size": args.per_device_train_batch_size, "seed": args.seed},
        )
        if self.budget:
            self.selection = select_neurons(self.scores, **self.budget)
            if self.out is not None and state.is_world_process_zero:
                self.selection.save(self.out)
                logger.info("calibration: selection of %d neurons written to %s", self.selection.num_neurons, self.out)
        if self.stop_training:
            control.should_training_stop = True

    def restore_original(self, model: torch.nn.Module) -> None:
        """Copy the kept rows back into the target modules of ``model`` (in place), then free them."""
        with torch.no_grad():
            for name, m in find_target_modules(model, self.target_modules).items():
                if name in self._original:
                    weight_rows(m).copy_(self._original[name])
        self._original = {}
