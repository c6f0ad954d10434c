"""Calibration inside your own training: a ``TrainerCallback`` that scores neurons after K steps.

Add :class:`NeuronCalibrationCallback` to the ``Trainer`` (or TRL ``SFTTrainer``) of a full fine-tune.
At the start of training it copies the rows of the target modules only (optionally in a smaller
dtype, e.g. bfloat16); after ``steps`` optimizer steps it scores every neuron by comparing its row before and
after: the cosine similarity (the paper's Eq. 1, Algorithm 1 lines 1-2) and the row's movement, both from the
same run (:data:`~peft_neft.selection.cosine.ROW_CHANGES`). It frees the copy and, given a budget, selects
neurons (once) by the chosen ``method`` and writes the :class:`~peft_neft.selection.NeuronSelection`.

It cannot fail silently: a K beyond the run, an unwritable output file and a resume without the
original rows are refused when training starts; a fine-tune whose weights or scores are not finite at step K
(it diverged) is refused, naming the rate to lower, and writes no selection; a run that ends without scoring
(stopped early, or resumed after step K) ends with a warning. Every checkpoint saved before step K holds the original
rows (:data:`ORIGINAL_ROWS_FILE`), so a run resumed from it scores against the original weights; a caller that
holds them passes them as ``original_rows`` instead, and nothing is written.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .._shapes import count_params, module_shape, weight_rows
from .._targets import DEFAULT_TARGET_MODULES, TargetModules, find_target_modules
from ..tuner.fingerprint import model_fingerprint
from .budget import Budget
from .neuron_selection import NeuronSelection
from .cosine import ROW_CHANGES
from .neuron_scores import NeuronScores
from .select import SPREADS, STRATEGIES, select_neurons

logger = logging.getLogger(__name__)

ORIGINAL_ROWS_FILE = "neft_calibration_original_rows.safetensors"


def _check_writable(out: Path) -> None:
    """Refuse an output file that cannot be written, by writing a file beside it."""
    if out.is_dir():
        raise ValueError(f"The selection output {os.fspath(out)!r} is a folder; give a file path such as "
                         f"{os.fspath(out / 'selection.safetensors')!r}.")
    try:
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".peft-neft-write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"The selection output {os.fspath(out)!r} cannot be written ({err.strerror}); create its "
                         "folder or choose a writable path before training.") from None


def _refuse_divergence(targets: dict[str, torch.nn.Module], scores: dict[str, torch.Tensor], steps: int,
                       lr: float) -> None:
    """Refuse to score a fine-tune whose target weights or scores are not finite: NaN rows would rank as unchanged."""
    for name, m in targets.items():
        what = "weights" if not bool(torch.isfinite(weight_rows(m)).all()) else \
            "scores" if not bool(torch.isfinite(scores[name]).all()) else None
        if what:
            raise ValueError(f"The calibration fine-tune diverged: after {steps} steps the {what} of {name} are not "
                             f"finite, so no neuron can be scored and no selection is written. Lower the learning "
                             f"rate (now {lr:g}; peft-neft calibrate --lr, compare --calibration-lr).")


class NeuronCalibrationCallback(TrainerCallback):
    """Score neurons after ``steps`` optimizer steps of the trainer's fine-tune; optionally select and save.

    Args:
        steps: optimizer steps K after which the rows are compared (the paper's "Early" ablation: 800).
        out: where to write the selection (``.safetensors``); needs ``budget``.
        budget: the :class:`~peft_neft.selection.budget.Budget` to select under, e.g. ``Budget(percent=1)``.
        strategy, seed, spread: how rows are chosen under the budget (see
            :func:`~peft_neft.selection.select_neurons`).
        method: the score that selects and that ``scores`` holds: ``"cosine"`` (the paper's) or ``"movement"``;
            ``all_scores`` holds every one of :data:`~peft_neft.selection.cosine.ROW_CHANGES`.
        target_modules: modules whose rows are scored (peft's matching rule).
        snapshot_dtype: dtype of the kept original rows (default: the weights' own dtype).
        stop_training: end training once scored (a calibration-only run).
        keep_original: keep the copy of the rows after scoring, for :meth:`restore_original`.
        original_rows: the target rows before training, by module name, held by the caller (e.g. copied from the
            base model before a resumed run loads its checkpoint): compared against as they are, at a resume too,
            and not written into checkpoints. Default: copied from the model when training starts, and on a
            resume read from the checkpoint.

    After step K, ``scores`` holds the :class:`~peft_neft.selection.NeuronScores` of ``method``, ``all_scores``
    those of every row-change score, and
    ``selection`` the selection (when a budget was given).
    """

    def __init__(self, steps: int, out: str | os.PathLike | None = None, *, budget: Budget | None = None,
                 strategy: str = "lowest", seed: int = 0, spread: str = "global", method: str = "cosine",
                 target_modules: TargetModules = DEFAULT_TARGET_MODULES, snapshot_dtype: torch.dtype | None = None,
                 stop_training: bool = False, keep_original: bool = False,
                 original_rows: dict[str, torch.Tensor] | None = None) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps must be a whole number of optimizer steps, got {steps!r}; "
                            "the callback compares at state.global_step == steps.")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(f"budget must be a Budget, e.g. Budget(percent=1), got {budget!r}.")
        if out is not None and budget is None:
            raise ValueError("A selection written to `out` needs a budget, e.g. budget=Budget(percent=1).")
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}.")
        if spread not in SPREADS:
            raise ValueError(f"Unknown spread {spread!r}; choose one of {SPREADS}.")
        if method not in ROW_CHANGES:
            raise ValueError(f"The calibration callback scores by comparing rows before and after training; "
                             f"method {method!r} is not one of {tuple(ROW_CHANGES)}.")
        self.steps, self.out, self.budget = steps, out, budget
        self.strategy, self.seed, self.spread, self.method = strategy, seed, spread, method
        self.target_modules, self.snapshot_dtype, self.stop_training = target_modules, snapshot_dtype, stop_training
        self.keep_original, self.original_rows = keep_original, original_rows
        self.scores: NeuronScores | None = None
        self.all_scores: dict[str, NeuronScores] = {}
        self.selection: NeuronSelection | None = None
        self._original: dict[str, torch.Tensor] = {}
        self._info: dict[str, Any] = {}
        self._not_scored = ""

    @staticmethod
    def _model(kwargs: dict[str, Any]) -> torch.nn.Module:
        model = kwargs.get("model")
        if model is None:
            raise ValueError("NeuronCalibrationCallback needs the trainer's model (transformers passes it as `model`).")
        return model

    def on_train_begin(self, args, state, control, **kwargs):
        model = self._model(kwargs)
        targets = find_target_modules(model, self.target_modules)
        self.scores, self.all_scores, self.selection, self._original = None, {}, None, {}
        self._info = {"fingerprint": model_fingerprint(model), "total": count_params(model),
                      "in_features": {name: module_shape(m)[1] for name, m in targets.items()}}
        if state.max_steps and self.steps > state.max_steps:
            raise ValueError(f"NeuronCalibrationCallback scores after step {self.steps}, but this run has only "
                             f"{state.max_steps} optimizer steps; lower steps or train for longer.")
        if self.budget is not None:  # an impossible budget fails now, not after the fine-tune
            self.budget.check_fits(model, self.target_modules)
        if self.out is not None and state.is_world_process_zero:
            _check_writable(Path(self.out))
        if state.global_step >= self.steps:
            self._not_scored = (f"this run resumed at step {state.global_step}, after step {self.steps}, so it did "
                                "not score; the run that passed step "
                                f"{self.steps} did" + (f" (its selection: {os.fspath(self.out)})" if self.out else ""))
            return
        self._not_scored = ""
        if self.original_rows is not None:
            self._original = self._given_rows(targets)
        elif state.global_step > 0:
            self._original = self._load_original(args, state, targets)
            logger.info("calibration: resumed at step %d with the original rows kept in its checkpoint",
                        state.global_step)
        else:
            self._original = {name: weight_rows(m).detach().to(dtype=self.snapshot_dtype or m.weight.dtype, copy=True)
                              for name, m in targets.items()}
        logger.info("calibration: kept the original rows of %d target modules; scoring after step %d",
                    len(targets), self.steps)

    def _given_rows(self, targets: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """``original_rows``, refused when they are not this model's target rows."""
        shapes = {name: tuple(weight_rows(m).shape) for name, m in targets.items()}
        if {name: tuple(t.shape) for name, t in self.original_rows.items()} != shapes:
            raise ValueError(f"original_rows hold other modules or shapes than this model's targets "
                             f"{sorted(shapes)[:3]}...; give the rows of the same model and target_modules.")
        return dict(self.original_rows)

    def _load_original(self, args, state, targets: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """The original rows saved in the checkpoint this run resumed from (refused when it has none)."""
        path = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", ORIGINAL_ROWS_FILE)
        if not path.is_file():
            raise ValueError(
                f"This run resumes at step {state.global_step}, before the calibration step {self.steps}, but "
                f"{os.fspath(path)} does not exist, so the original weights are lost: the rows would be compared "
                "with the checkpoint's. Resume from a checkpoint saved with NeuronCalibrationCallback, or start over."
            )
        rows = load_file(os.fspath(path))
        shapes = {name: tuple(weight_rows(m).shape) for name, m in targets.items()}
        if {name: tuple(t.shape) for name, t in rows.items()} != shapes:
            raise ValueError(f"{os.fspath(path)} holds the rows of other modules or shapes than this model's "
                             f"targets {sorted(shapes)[:3]}...; resume with the same model and target_modules.")
        return {name: rows[name].to(weight_rows(m).device) for name, m in targets.items()}

    def on_save(self, args, state, control, **kwargs):
        if (not self._original or self.original_rows is not None or state.global_step >= self.steps
                or not state.is_world_process_zero):
            return
        folder = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if folder.is_dir():
            save_file({n: t.detach().cpu().contiguous() for n, t in self._original.items()},
                      os.fspath(folder / ORIGINAL_ROWS_FILE))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.steps or not self._original:
            return
        targets = find_target_modules(self._model(kwargs), self.target_modules)
        metadata = {"fingerprint": self._info["fingerprint"], "source": "calibration-callback", "steps": self.steps,
                    "lr": args.learning_rate, "batch_size": args.per_device_train_batch_size, "seed": args.seed}
        for method, change in ROW_CHANGES.items():
            scores = {name: change(self._original[name], weight_rows(m)) for name, m in targets.items()}
            _refuse_divergence(targets, scores, self.steps, args.learning_rate)
            self.all_scores[method] = NeuronScores(scores=scores, in_features=self._info["in_features"],
                                                   total_params=self._info["total"], method=method,
                                                   metadata=dict(metadata))
        if not self.keep_original:
            self._original = {}
        self.scores = self.all_scores[self.method]
        if self.budget is not None:
            self.selection = select_neurons(self.scores, budget=self.budget, strategy=self.strategy, seed=self.seed,
                                            spread=self.spread)
            if self.out is not None and state.is_world_process_zero:
                self.selection.save(self.out)
                logger.info("calibration: selection of %d neurons written to %s", self.selection.num_neurons, self.out)
        if self.stop_training:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.scores is not None:
            return
        reason = self._not_scored or (f"training ended at step {state.global_step}, before the calibration step "
                                      f"{self.steps}")
        warnings.warn(f"NeuronCalibrationCallback scored no neurons: {reason}.", UserWarning, stacklevel=2)

    def restore_original(self, model: torch.nn.Module) -> None:
        """Copy the kept rows back into the target modules of ``model`` (in place), then free them (and
        ``original_rows``)."""
        with torch.no_grad():
            rows = self._original or self.original_rows or {}
            for name, m in find_target_modules(model, self.target_modules).items():
                if name in rows:
                    weight_rows(m).copy_(rows[name])
        self._original, self.original_rows = {}, None
