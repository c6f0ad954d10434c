"""The comparison grid: every (method, seed) not yet in a folder is trained, evaluated and stored.

Every method starts from the same base model and sees the same batches in the same order (per
seed), with its own learning rate (the best of ``lr_grid`` on validation loss); the checkpoint with
the lowest validation loss is evaluated by greedy generation on the test set. Anything random in a
method's initialisation (LoRA's A) is drawn from its run seed, so a run gives the same result alone,
after other runs, in another worker process, or resumed after an interruption: each training
checkpoints at every evaluation, calibration scores are cached, and the same call resumes.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..atomic import atomic_dir
from ..adapters.model_card import TrainingRun
from ..adapters.saving import save_pretrained_atomically
from ..tasks import encode_for_generation, encode_pairs, get_task, hold_out_validation, make_collator, prompt_text
from ..tasks.task import language_name
from ..training import train_model, validation_loss
from ..training.precision import Precision
from ..training.trainer import trainable_parameters
from ..settings import CompareSettings
from .config import CompareConfig
from .evaluate import adapter_bytes, generate, memory_mb, model_device
from .methods import Method, neft_targets, parse_method
from .report import write_report
from .scoring import KEPT, cached_calibration, check_stored_calibrations, keep_calibration, stored_calibration
from .results import (RunResult, data_fingerprint, diverged, load_results, outputs_path, run_key, save_results,
                      training_key, weights_fingerprint, write_outputs)
from .significance import metric_names, store_figures
from .workers import start_worker

logger = logging.getLogger(__name__)

# Settings that change how a run is shown, not what it computes: left out of a folder's identity.
# lr_grid too: trainings are keyed by their rate, so a grid extended on resume adds trainings and reopens the runs
# whose search it widens.
_NOT_IDENTITY = ("device", "dtype", "report_to", "workers", "checkpoint_dir", "save_adapters", "lr_grid",
                 "stored_calibrations")  # a stored file is recorded, with its sha256, in the runs that used it
# A setting added after a folder was made is taken at its default there (the default keeps the earlier behaviour).
_SETTINGS_DEFAULTS = json.loads(json.dumps(asdict(CompareSettings())))


def compare(
    load_model: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    data: dict[str, Dataset],
    methods: Sequence[Method | str],
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    config: CompareConfig | None = None,
    model_id: str = "",
    progress: bool = True,
    precision: Precision | None = None,
    data_name: str = "",
) -> dict[str, Any]:
    """Train and evaluate every (method, seed) not already in ``out_dir/results.json``; return all results.

    ``data`` has ``train``, ``validation`` and ``test`` datasets with ``source``/``target`` columns; without
    ``validation``, the last 10 % of ``train`` (at most 200 pairs) is held out (:func:`~peft_neft.tasks.hold_out_validation`).
    ``load_model`` returns a fresh float32 copy of the base model each call; ``precision`` (default:
    resolved from ``config.device`` and ``config.dtype``) puts it on its device with frozen weights in its
    dtype. Calibration always computes in float32: its row changes are tiny, and bf16 rounding would
    reorder them. With ``config.workers``
    above 1, runs go to that many processes (torch's threads shared out among them); ``load_model`` must
    then be picklable (a module-level function or a ``functools.partial``, not a lambda). The folder's
    identity holds a fingerprint of the base model's weights, not its path; ``model_id`` is kept for show.
    ``data_name`` says where the data came from in the cards of the saved adapters.
    """
    config = config or CompareConfig()
    methods = [parse_method(m) if isinstance(m, str) else m for m in methods]
    if "validation" not in data and "train" in data and len(data["train"]):
        train, validation = hold_out_validation(data["train"])
        data = {**data, "train": train, "validation": validation}
        logger.info("validation: the last %d training pairs held out", len(validation))
    missing = [s for s in ("train", "validation", "test") if s not in data or len(data[s]) == 0]
    if missing:
        raise ValueError(f"Data split(s) {missing} are missing or empty; give train, validation and test pairs.")
    if not seeds:
        raise ValueError("Give at least one seed.")
    if config.workers > 1:
        _check_picklable(load_model)
    precision = precision or Precision.resolve(config.device, config.dtype)
    out = Path(out_dir)
    checkpoints = Path(config.checkpoint_dir) if config.checkpoint_dir else out / "checkpoints"
    base = load_model()
    total_params = sum(p.numel() for p in base.parameters())
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY}
    identity = {"config": json.loads(json.dumps(settings)), "data": data_fingerprint(data),
                "model": weights_fingerprint(base), "device": str(precision.device), "dtype": precision.name}
    check_stored_calibrations(methods, config, base)
    del base
    results = load_results(out / "results.json", identity, _NOT_IDENTITY, _SETTINGS_DEFAULTS)
    results["model_id"] = model_id
    _reopen_widened_runs(results, config, methods, seeds, out)
    instruction = get_task(config.task).instruction_for(config.source_lang, config.target_lang)
    collator = make_collator(tokenizer)  # the calibration's (float32 whatever --dtype); training pads for the dtype

    def encode(table: Dataset) -> list[dict]:
        return encode_pairs(tokenizer, instruction, table["source"], table["target"], config.max_source_tokens,
                            config.max_target_tokens)

    train_rows, val_rows = encode(data["train"]), encode(data["validation"])
    prompts = [encode_for_generation(tokenizer, instruction, s, config.max_source_tokens) for s in data["test"]["source"]]
    results.setdefault("trainings", {})
    pending = []
    for seed, method in _pending(results, methods, seeds):  # a run stopped after its last training is chosen now
        if not _finish_run(method, seed, config, results, out, checkpoints):
            pending.append((seed, method))
    training_collator = make_collator(tokenizer, precision.pad_to_multiple_of)
    jobs = [_Job(load_model, tokenizer, method, seed, lr, config, precision, training_collator, train_rows, val_rows,
                 prompts, list(data["test"]["target"]), None,
                 checkpoints / _safe(training_key(method.spec, seed, lr)), total_params, progress and config.workers == 1,
                 out / "runs" / _safe(training_key(method.spec, seed, lr)), data_name)
            for seed, method in pending for lr in _rates(config, method)
            if training_key(method.spec, seed, lr) not in results["trainings"]]
    jobs.sort(key=lambda job: (job.seed, _rates(config, job.method).index(job.lr)))  # every method's first rate first
    calibrations = {key: _Calibration(key, job.method, job.seed, checkpoints, load_model, train_rows, collator, config,
                                      precision.device, progress and config.workers == 1, out / KEPT)
                    for job in jobs if (key := job.method.calibration_key(job.seed))}
    logger.debug("%d trainings to run (%s); %d already in %s", len(jobs),
                 ", ".join(training_key(j.method.spec, j.seed, j.lr) for j in jobs) or "none",
                 len(results["trainings"]), out / "results.json")
    bar = tqdm(total=len(jobs), desc="trainings", unit="run", disable=not progress)
    for job, row in _executed(jobs, calibrations, config.workers):
        name = training_key(job.method.spec, job.seed, job.lr)
        hypotheses = row.pop("hypotheses")
        if diverged(row):
            logger.warning("%s: diverged at step %d (validation loss not finite): no result, no adapter; lower its "
                           "learning rate", name, row["diverged_step"])
        else:
            write_outputs(outputs_path(out, name), data["test"], hypotheses)
            logger.info("%s: validation loss %.4f, %s", name, row["best_val_loss"],
                        ", ".join(f"{k}={row['scores'][k]:.2f}" for k in metric_names(config.task)))
        results["trainings"][name] = row
        save_results(out / "results.json", results)
        _finish_run(job.method, job.seed, config, results, out, checkpoints)
        _report(results, out, methods)
        bar.update()
    bar.close()
    for key in calibrations:  # every run that needed it has finished: kept beside the results, for reuse
        keep_calibration(checkpoints, key, out)
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    _report(results, out, methods)
    return results


def _reopen_widened_runs(results: dict[str, Any], config: CompareConfig, methods: Sequence[Method],
                         seeds: Sequence[int], out: Path) -> None:
    """A finished run of this call whose rate search lacks a rate of today's grid is reopened: its new rates train,
    and the run is chosen again among all of them (the trainings it had are kept). Runs of methods or seeds not in
    this call stay as they are, so one method's grid can be widened alone. results.json is saved before any outputs
    move, so the folder on disk never names outputs that are not there (a report of it works while the rates train)."""
    called = {run_key(m.spec, s) for m in methods for s in seeds}
    moves = []
    for key, run in list(results["runs"].items()):
        if key not in called:
            continue
        tried = {round(t["lr"], 12) for t in run.get("lr_search", [])}
        missing = [lr for lr in _rates(config, parse_method(run["method"])) if round(lr, 12) not in tried]
        if parse_method(run["method"]).trains and missing:
            # the outputs go back under their training's key, for the run to choose again
            training = training_key(run["method"], run["seed"], run["lr"])
            moves.append((outputs_path(out, key), outputs_path(out, training)))
            del results["runs"][key]
            for pair_key, pair in list(results.get("paired", {}).items()):
                if key in (run_key(pair["system"], pair["seed"]), run_key(pair["baseline"], pair["seed"])):
                    del results["paired"][pair_key]
            logger.info("%s: the learning-rate grid now also has %s; reopened", key, ", ".join(f"{lr:g}" for lr in missing))
    if moves:
        save_results(out / "results.json", results)
    for own, training in moves:
        if own.is_file():  # (not there: a call stopped between saving and moving; _finish_run takes the run's own)
            os.replace(own, training)


def _rates(config: CompareConfig, method: Method) -> list[float]:
    """The learning rates a method's run trains at: its rate times each factor of the grid (base: none)."""
    return [config.lr(method.kind) * f for f in config.lr_grid] if method.trains else [0.0]


def _finish_run(method: Method, seed: int, config: CompareConfig, results: dict[str, Any], out: Path,
                checkpoints: Path) -> bool:
    """Once every rate of the grid has trained: the run is its rate of lowest validation loss among all it trained at
    (an earlier, narrower grid's too), with the search beside it. Returns whether the run is finished."""
    if any(training_key(method.spec, seed, lr) not in results["trainings"] for lr in _rates(config, method)):
        return False
    names = sorted((n for n, t in results["trainings"].items() if t["method"] == method.spec and t["seed"] == seed),
                   key=lambda n: results["trainings"][n]["lr"])
    trainings = [results["trainings"][n] for n in names]
    # The rate of lowest validation loss; a diverged rate loses to any other.
    best = min(range(len(names)), key=lambda i: (diverged(trainings[i]), trainings[i]["best_val_loss"]))
    key = run_key(method.spec, seed)
    row = {**trainings[best], "lr_search": [{k: t.get(k) for k in _SEARCH} for t in trainings]}
    if not diverged(row):
        chosen, kept = outputs_path(out, names[best]), outputs_path(out, key)
        if chosen.is_file():
            os.replace(chosen, kept)  # stored once, under the run's key
            logger.debug("%s: took the outputs of %s (%s)", key, names[best], kept)
        elif not kept.is_file():  # (kept and no chosen: moved by a call stopped before it saved results.json)
            raise ValueError(f"{chosen} is missing, so run {key} cannot take its training {names[best]}; delete the "
                             f"entry {names[best]!r} from {out / 'results.json'}'s \"trainings\" (or restore the "
                             "file) and run the same command again to redo that training.")
    results["runs"][key] = row
    save_results(out / "results.json", results)
    _keep_adapter(checkpoints / _safe(names[best]) / "adapter", config.save_adapters, method.spec, seed, row,
                  results, out)
    for name in names:
        shutil.rmtree(checkpoints / _safe(name), ignore_errors=True)
    if diverged(row):
        logger.warning("%s: diverged, at every rate tried (at %g by step %d): no result; lower the learning rate",
                       key, row["lr"], row["diverged_step"])
    else:
        logger.info("%s: %s", key, ", ".join(f"{k}={row['scores'][k]:.2f}" for k in metric_names(config.task)))
    return True


_SEARCH = ("lr", "best_val_loss", "best_step", "steps_run", "stop_reason", "diverged_step")


def _check_picklable(load_model: Callable) -> None:
    try:
        pickle.dumps(load_model)
    except Exception:
        raise ValueError(f"workers > 1 runs each run in its own process, so load_model must be picklable (a "
                         f"module-level function or functools.partial), not {load_model!r}; or use workers=1.") from None


def _safe(key: str) -> str:
    return outputs_path(Path("."), key).name.removesuffix(".jsonl.gz")


def _pending(results: dict[str, Any], methods: Sequence[Method], seeds: Sequence[int]) -> list[tuple[int, Method]]:
    """The (seed, method) runs still to do; the untrained ``base`` once, whatever the seeds."""
    pending, base_done = [], any(not parse_method(r["method"]).trains for r in results["runs"].values())
    for seed in seeds:
        for method in methods:
            key = run_key(method.spec, seed)
            if key in results["runs"]:
                logger.info("%s: already done, skipped", key)
            elif not method.trains and base_done:
                logger.info("%s: skipped, the untrained model does not depend on the seed", key)
            else:
                base_done = base_done or not method.trains
                pending.append((seed, method))
    return pending


def _report(results: dict[str, Any], out: Path, methods: Sequence[Method]) -> None:
    """Store the figures of finished runs, write the table and plot; a failure is logged, never allowed to stop
    the runs still to train."""
    try:
        if store_figures(results, out):
            save_results(out / "results.json", results)
        write_report(results, out, [m.spec for m in methods])
    except Exception as err:  # the results themselves are saved; the report can be rebuilt from them
        logger.warning("the report of %s could not be written (%s: %s); results.json is complete", out,
                       type(err).__name__, err)


@dataclass
class _Job:
    """One (method, seed) run and everything it needs, picklable for a worker process."""

    load_model: Callable[[], PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase
    method: Method
    seed: int
    lr: float
    config: CompareConfig
    precision: Precision
    collator: Any
    train_rows: list[dict]
    val_rows: list[dict]
    prompts: list[list[int]]
    references: list[str]
    calibration: tuple[Any, dict[str, Any]] | None
    folder: Path  # its checkpoints while it trains, then its result and adapter until the run is complete
    total_params: int
    progress: bool
    logs: Path  # where Trainer's loggers (report_to) write, kept after the run
    data_name: str = ""  # where the data came from, for the saved adapters' cards


@dataclass
class _Calibration:
    """One calibration, named by its ``key``, with what it needs (``method``: one that needs it), picklable."""

    key: str
    method: Method
    seed: int
    folder: Path  # where it is cached
    load_model: Callable[[], PreTrainedModel]
    train_rows: list[dict]
    collator: Any
    config: CompareConfig
    device: torch.device
    progress: bool
    kept: Path  # where finished calibrations are kept (OUT/calibrations)

    def __call__(self) -> tuple[Any, dict[str, Any]]:
        stored = getattr(self.method, "calibration", None)  # a NeFT variant's stored calibration's name
        if stored:
            return stored_calibration(stored, self.config)
        return cached_calibration(self.folder, self.key, self.method.score, neft_targets(self.method, self.config),
                                  self.load_model, self.train_rows, self.collator, self.config, self.seed, self.device,
                                  self.progress, self.kept)


def _executed(jobs: list[_Job], calibrations: dict[str, _Calibration],
              workers: int) -> Iterator[tuple[_Job, RunResult]]:
    """Each training job with its result row, as trainings finish: in this process, or in ``workers`` spawned ones.

    Calibrations are jobs of the same queue: each runs once, and the trainings that need it start when it is done;
    trainings that need none start at once (in this process, they run first).
    """
    waiting = {key: [job for job in jobs if job.method.calibration_key(job.seed) == key] for key in calibrations}
    ready = [job for job in jobs if job.method.calibration_key(job.seed) is None]
    if workers <= 1 or len(jobs) <= 1:
        yield from ((job, _execute(job)) for job in ready)
        for key, calibration in calibrations.items():
            scores = calibration()
            for job in waiting[key]:
                job.calibration = scores
                yield job, _execute(job)
        return
    threads = max(1, torch.get_num_threads() // workers)
    level = logging.getLogger("peft_neft").getEffectiveLevel()
    levels = {name: log.level for name, log in logging.root.manager.loggerDict.items()
              if isinstance(log, logging.Logger) and log.level != logging.NOTSET}
    with ProcessPoolExecutor(min(workers, len(jobs) + len(calibrations)), mp_context=get_context("spawn"),
                             initializer=start_worker, initargs=(threads, level, list(warnings.filters), levels,
                                                                 hf_logging.is_progress_bar_enabled())) as pool:
        futures: dict[Future, _Job | str] = {pool.submit(calibration): key for key, calibration in calibrations.items()}
        futures.update({pool.submit(_execute, job): job for job in ready})
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                item = futures.pop(future)
                if isinstance(item, str):  # a calibration: its trainings join the queue
                    for job in waiting[item]:
                        job.calibration = future.result()
                        futures[pool.submit(_execute, job)] = job
                else:
                    yield item, future.result()


def _execute(job: _Job) -> RunResult:
    scores, calibration = job.calibration or (None, None)
    row = _Run(job, scores).train_and_evaluate()
    row["calibration"] = calibration
    return row


class _Run:
    """One (method, seed, learning rate): its training, then the test-set evaluation of its best checkpoint."""

    def __init__(self, job: _Job, scores: Any) -> None:
        self.job, self.method, self.seed, self.config, self.scores = job, job.method, job.seed, job.config, scores
        self.selection = None  # NeFT's rows, saved beside its adapter

    def _fresh_model(self) -> torch.nn.Module:
        """The base model made trainable by the method, anything random in it drawn from the run seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            base = self.job.load_model()
            self.selection = self.method.rows(base, self.scores, self.seed, self.config)
            model = self.method.prepare(base, self.seed, self.selection, self.config.lora_target_modules)
        return self.job.precision.apply(model)

    def _train(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Train at the job's rate (checkpointed in its folder); the base model is only validated."""
        job, config = self.job, self.config
        model = self._fresh_model()
        if not self.method.trains:
            loss = validation_loss(model, job.val_rows, job.collator, config.training(), precision=job.precision)
            stats = {"best_val_loss": loss, "best_step": 0, "steps_run": 0, "max_steps": 0, "stop_reason": None,
                     "train_seconds": 0.0, "time_per_step_s": 0.0, "curve": []}
        else:
            logger.info("%s seed %d: training at lr %g", self.method.spec, self.seed, job.lr)
            stats = train_model(model, job.train_rows, job.val_rows, job.collator, config.training(),
                                learning_rate=job.lr, seed=self.seed, precision=job.precision,
                                checkpoint_dir=job.folder / "training", logging_dir=job.logs, progress=job.progress)
        return model, {**stats, "lr": job.lr}

    def train_and_evaluate(self) -> RunResult:
        job, method, config = self.job, self.method, self.config
        model, best = self._train()
        start = time.perf_counter()
        failed = diverged(best)  # its weights are no result: not evaluated, not saved
        hypotheses = [] if failed else generate(
            model, job.tokenizer, job.prompts, max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size,
            precision=job.precision, desc=f"{method.spec} test", progress=job.progress,
            decoded=job.folder / "decoded.jsonl")  # a kill mid-decoding keeps the batches done
        eval_seconds = time.perf_counter() - start
        scored = {"signatures": {}} if failed else get_task(config.task).score(hypotheses, job.references,
                                                                                char_level=config.char_level)
        trainable = sum(p.numel() for p in trainable_parameters(model)) if method.trains else 0
        mem, mem_kind = memory_mb(model)
        if config.save_adapters != "none" and method.keeps_adapter and not failed:
            # with the tokenizer (its chat template builds the prompts) and the card a receiver can follow
            # save_embedding_layers=False: no run resizes the vocabulary, so peft need not look the base up on the Hub
            save_pretrained_atomically(model, job.folder / "adapter", tokenizer=job.tokenizer,
                                       run=self._card_run(best, scored), save_embedding_layers=False)
            if self.selection is not None:
                self.selection.save(job.folder / "adapter" / "selection.safetensors")
        return {
            "method": method.spec, **method.described(),
            "seed": self.seed, "lr": best["lr"], "steps_run": best["steps_run"],
            "max_steps": best["max_steps"], "stop_reason": best["stop_reason"], "best_step": best["best_step"],
            "diverged_step": best.get("diverged_step"),
            "best_val_loss": best["best_val_loss"], "curve": best["curve"],
            "trainable_params": trainable, "total_params": job.total_params,
            "trainable_pct": 100 * trainable / job.total_params,
            "time_per_step_s": best["time_per_step_s"], "train_seconds": best["train_seconds"],
            "eval_seconds": eval_seconds, "memory_mb": mem, "memory_kind": mem_kind,
            "adapter_bytes": adapter_bytes(model, method),
            "scores": None if failed else {k: v for k, v in scored.items() if k != "signatures"},
            "signatures": scored["signatures"],
            "device": str(model_device(model)), "hypotheses": hypotheses,
        }

    def _card_run(self, best: dict[str, Any], scored: dict[str, Any]) -> TrainingRun:
        """What the saved adapter's card says of this training: task, exact prompt, data, scores."""
        job, config = self.job, self.config
        task = config.task if config.task != "translation" else (
            f"translation, {language_name(config.source_lang)} to {language_name(config.target_lang)}")
        instruction = get_task(config.task).instruction_for(config.source_lang, config.target_lang)
        data = (f"{len(job.train_rows)} training, {len(job.val_rows)} validation and {len(job.prompts)} test pairs; "
                f"sources cut to {config.max_source_tokens} tokens, targets to {config.max_target_tokens}")
        data = f"{job.data_name}: {data}" if job.data_name else data
        steps = (f"{best['steps_run']} of at most {best['max_steps']} steps, batch {config.batch_size}, the checkpoint "
                 f"of lowest validation loss ({best['best_val_loss']:.4f}, step {best['best_step']}) kept")
        return TrainingRun(task=task, instruction=instruction, prompt=prompt_text(job.tokenizer, instruction, "{source}"),
                           data=data, method=self.method.spec, seed=self.seed, learning_rate=job.lr, steps=steps,
                           scores={k: v for k, v in scored.items() if k != "signatures"},
                           signatures=scored.get("signatures", {}))


def _keep_adapter(source: Path, mode: str, spec: str, seed: int, row: dict[str, Any], results: dict[str, Any],
                  out: Path) -> None:
    """Copy a finished run's adapter to ``out/adapters/``: every run's, or the method's best on validation loss."""
    if not source.is_dir():
        return
    if mode == "best":
        rivals = [r["best_val_loss"] for k, r in results["runs"].items()
                  if r["method"] == spec and k != run_key(spec, seed) and not diverged(r)]
        if rivals and min(rivals) <= row["best_val_loss"]:
            return
    target = out / "adapters" / _safe(spec if mode == "best" else run_key(spec, seed))
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    logger.info("%s: adapter saved in %s", run_key(spec, seed), target)
