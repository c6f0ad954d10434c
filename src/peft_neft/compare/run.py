"""The comparison grid: every (method, seed) not yet in a folder is trained, evaluated and stored.

Every method starts from the same base model and sees the same batches in the same order (per
seed), with its own learning rate (the best of ``lr_grid`` on validation loss); the checkpoint with
the lowest validation loss is evaluated by greedy generation on the test set.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..selection import calibrate
from ..device import autocast_for, dtype_name, resolve_device, resolve_dtype
from ..tasks import TASKS, encode_for_generation, encode_for_training, hold_out_validation, score
from ..tasks.prompts import make_collator
from ..training import train_model, validation_loss
from ..training.trainer import set_precision, trainable_parameters
from .config import CompareConfig
from .evaluate import adapter_bytes, generate, memory_mb, model_device
from .methods import Method, parse_method, prepare_model, shape_scores
from .report import write_report
from .results import data_fingerprint, load_results, outputs_path, run_key, save_results, write_outputs
from .significance import metric_names

logger = logging.getLogger(__name__)

# Settings that change how a run is shown, not what it computes: left out of a folder's identity.
_NOT_IDENTITY = ("device", "dtype", "report_to")


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
) -> dict[str, Any]:
    """Train and evaluate every (method, seed) not already in ``out_dir/results.json``; return all results.

    ``data`` has ``train``, ``validation`` and ``test`` datasets with ``source``/``target`` columns; without
    ``validation``, the last 10 % of ``train`` (at most 200 pairs) is held out (:func:`~peft_neft.tasks.hold_out_validation`).
    ``load_model`` returns a fresh float32 copy of the base model each call; frozen weights are cast
    to the resolved ``config.dtype`` and the model is moved to ``config.device``.
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
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    out = Path(out_dir)
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY}
    identity = {"config": json.loads(json.dumps(settings)), "data": data_fingerprint(data), "model": model_id,
                "device": str(device), "dtype": dtype_name(dtype)}
    results = load_results(out / "results.json", identity)
    instruction = TASKS[config.task].instruction_for(config.source_lang, config.target_lang)
    collator = make_collator(tokenizer)

    def encode(table: Dataset) -> list[dict]:
        return [encode_for_training(tokenizer, instruction, s, t, config.max_source_tokens, config.max_target_tokens)
                for s, t in zip(table["source"], table["target"])]

    train_rows, val_rows = encode(data["train"]), encode(data["validation"])
    prompts = [encode_for_generation(tokenizer, instruction, s, config.max_source_tokens) for s in data["test"]["source"]]
    calibrations: dict[int, tuple[Any, dict[str, Any]]] = {}
    total_params = sum(p.numel() for p in load_model().parameters())
    grid = [(seed, method) for seed in seeds for method in methods]
    bar = tqdm(grid, desc="runs", unit="run", disable=not progress)
    for seed, method in bar:
        key = run_key(method.spec, seed)
        bar.set_postfix_str(key)
        if key in results["runs"]:
            logger.info("%s: already done, skipped", key)
            continue
        done_base = next((k for k, r in results["runs"].items() if r["kind"] == "base"), None)
        if method.kind == "base" and done_base:
            logger.info("%s: skipped, the untrained model does not depend on the seed (%s)", key, done_base)
            continue
        scores, calibration = None, None
        if method.kind == "neft" and method.strategy == "random":
            scores = shape_scores(load_model(), config.neft_target_modules)
        elif method.kind == "neft":
            if seed not in calibrations:
                calibrations[seed] = _calibrate(load_model, train_rows, collator, config, seed, device, dtype, progress)
            scores, calibration = calibrations[seed]
        run = _Run(load_model, method, seed, scores, config, device, dtype, collator, progress)
        row = run.train_and_evaluate(tokenizer, train_rows, val_rows, prompts, data["test"], total_params)
        row["calibration"] = calibration
        write_outputs(outputs_path(out, key), data["test"], row.pop("hypotheses"))
        results["runs"][key] = row
        save_results(out / "results.json", results)
        write_report(results, out, [m.spec for m in methods])
        logger.info("%s: %s", key, ", ".join(f"{k}={row['scores'][k]:.2f}" for k in metric_names(config.task)))
    write_report(results, out, [m.spec for m in methods])
    return results


def _calibrate(load_model, train_rows: list[dict], collator, config: CompareConfig, seed: int,
               device: torch.device, dtype: torch.dtype, progress: bool):
    """Cosine scores from the paper's short full fine-tune (float32 master weights, autocast to ``dtype``)."""
    model = load_model().to(device)
    lr = config.calibration_lr if config.calibration_lr is not None else config.lr("full")
    start = time.perf_counter()
    with autocast_for(device, dtype):
        scores = calibrate(model, train_rows, steps=config.calibration_steps, target_modules=config.neft_target_modules,
                           lr=lr, batch_size=config.batch_size, seed=seed, collate_fn=collator, progress=progress)
    info = {"steps": config.calibration_steps, "lr": lr, "seconds": time.perf_counter() - start,
            "target_modules": list(config.neft_target_modules)}
    return scores, info


class _Run:
    """One (method, seed): its learning-rate search, then the test-set evaluation of the best model."""

    def __init__(self, load_model, method: Method, seed: int, scores, config: CompareConfig, device: torch.device,
                 dtype: torch.dtype, collator, progress: bool) -> None:
        self.load_model, self.method, self.seed, self.scores = load_model, method, seed, scores
        self.config, self.device, self.dtype, self.collator, self.progress = config, device, dtype, collator, progress

    def _fresh_model(self) -> torch.nn.Module:
        model = prepare_model(self.load_model(), self.method, self.seed, self.scores)
        set_precision(model, self.dtype)
        return model.to(self.device)

    def _search(self, train_rows, val_rows) -> tuple[torch.nn.Module, dict[str, Any], list[dict[str, Any]]]:
        """Train at each rate of the grid; keep the model and statistics of the lowest validation loss."""
        config, kind = self.config, self.method.kind
        best_model, best, search = None, None, []
        for factor in (config.lr_grid if kind != "base" else (1.0,)):
            model, lr = self._fresh_model(), config.lr(kind) * factor
            if kind == "base":
                loss = validation_loss(model, val_rows, self.collator, config.training(), device=self.device,
                                       dtype=self.dtype)
                stats = {"best_val_loss": loss, "best_step": 0, "steps_run": 0, "max_steps": 0, "stop_reason": None,
                         "train_seconds": 0.0, "time_per_step_s": 0.0, "curve": []}
            else:
                logger.info("%s seed %d: training at lr %g", self.method.spec, self.seed, lr)
                stats = train_model(model, train_rows, val_rows, self.collator, config.training(), learning_rate=lr,
                                    seed=self.seed, device=self.device, dtype=self.dtype, progress=self.progress)
            stats["lr"] = lr
            search.append({k: stats[k] for k in ("lr", "best_val_loss", "best_step", "steps_run", "stop_reason")})
            if best is None or stats["best_val_loss"] < best["best_val_loss"]:
                best_model, best = model, stats
            del model
        return best_model, best, search

    def train_and_evaluate(self, tokenizer, train_rows, val_rows, prompts, test: Dataset, total: int) -> dict[str, Any]:
        method, config = self.method, self.config
        model, best, search = self._search(train_rows, val_rows)
        start = time.perf_counter()
        hypotheses = generate(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                              batch_size=config.eval_batch_size, dtype=self.dtype, desc=f"{method.spec} test",
                              progress=self.progress)
        eval_seconds = time.perf_counter() - start
        scored = score(config.task, hypotheses, list(test["target"]), char_level=config.char_level)
        trainable = 0 if method.kind == "base" else sum(p.numel() for p in trainable_parameters(model))
        mem, mem_kind = memory_mb(model)
        return {
            "method": method.spec, "kind": method.kind, "strategy": method.strategy if method.kind == "neft" else None,
            "seed": self.seed, "lr": best["lr"], "lr_search": search, "steps_run": best["steps_run"],
            "max_steps": best["max_steps"], "stop_reason": best["stop_reason"], "best_step": best["best_step"],
            "best_val_loss": best["best_val_loss"], "curve": best["curve"],
            "trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
            "time_per_step_s": best["time_per_step_s"], "train_seconds": best["train_seconds"],
            "eval_seconds": eval_seconds, "memory_mb": mem, "memory_kind": mem_kind,
            "adapter_bytes": adapter_bytes(model, method),
            "scores": {k: v for k, v in scored.items() if k != "signatures"}, "signatures": scored["signatures"],
            "device": str(model_device(model)), "hypotheses": hypotheses,
        }
