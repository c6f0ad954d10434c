"""Side-by-side comparison of fine-tuning methods on one task: NeFT vs LoRA vs full and partial FT.

Every method starts from the same base model and sees the same batches in the same order (per
seed), with its own learning rate; the checkpoint with the lowest validation loss is evaluated by
greedy generation on the test set. Each finished (method, seed) run is written to
``results.json`` at once (atomically) and never redone, so an interrupted grid resumes where it
stopped. ``results.md`` holds the table and ``results.png`` the score-vs-parameters plot.

Methods (paper section 5.1):
  ``base``                 no training (the zero-shot base model; evaluated once, for the first seed)
  ``full``                 every parameter
  ``embed``                the input embedding only (tied to the LM head in SmolLM2, so that too)
  ``in-out``               the MLP input and output projections, ``up_proj`` and ``down_proj``, fully
  ``lora:R``               peft LoRA of rank R on every Linear of the blocks (not the LM head)
  ``neft:P``               NeFT training P% of all parameters (``neft:1`` or ``neft:1%``)
  ``neft:match-lora:R``    NeFT with as many trainable parameters as ``lora:R``
  ``neft-random:...``, ``neft-reversed:...``   the ablations at a budget written as for ``neft``
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from .atomic import atomic_path
from .tasks import TASKS, encode_for_generation, encode_for_training, score
from .tasks.prompts import IGNORE_INDEX
from .tasks.significance import DEFAULT_SAMPLES, paired_bootstrap
from .tuner import NeFTConfig

RESULTS_FORMAT = "peft-neft-compare/1"
IN_OUT_MODULES = ("up_proj", "down_proj")
NEFT_STRATEGIES = {"neft": "lowest", "neft-random": "random", "neft-reversed": "reversed"}
# Per-method learning rates when nothing else is given: common defaults, not tuned here (use ``lr_grid``).
DEFAULT_LR = {"base": 0.0, "full": 5e-5, "embed": 1e-3, "in-out": 5e-5, "lora": 1e-3, "neft": 5e-4}


@dataclass(frozen=True)
class Method:
    """One parsed method name; ``spec`` is the canonical text used as its key in the results."""

    spec: str
    kind: str  # base | full | embed | in-out | lora | neft
    rank: int | None = None  # LoRA rank, or the LoRA rank a NeFT budget matches
    percent: float | None = None  # NeFT budget as % of all parameters
    strategy: str = "lowest"  # NeFT neuron selection strategy


_METHOD_HELP = "base, full, embed, in-out, lora:R, neft:P, neft:match-lora:R, neft-random:..., neft-reversed:..."


def parse_method(text: str) -> Method:
    """Parse one method name such as ``lora:8``, ``neft:0.5%`` or ``neft-random:match-lora:8``."""
    spec = text.strip().lower()
    if spec in ("base", "full", "embed", "in-out"):
        return Method(spec, spec)
    head, _, arg = spec.partition(":")
    try:
        if head == "lora" and re.fullmatch(r"\d+", arg) and int(arg) > 0:
            return Method(spec, "lora", rank=int(arg))
        if head in NEFT_STRATEGIES:
            strategy = NEFT_STRATEGIES[head]
            match = re.fullmatch(r"match-lora:(\d+)", arg)
            if match and int(match.group(1)) > 0:
                return Method(spec, "neft", rank=int(match.group(1)), strategy=strategy)
            percent = float(arg.rstrip("%"))
            if 0 < percent <= 100:
                return Method(spec, "neft", percent=percent, strategy=strategy)
    except ValueError:
        pass
    raise ValueError(f"Unknown method {text!r}. Known methods: {_METHOD_HELP}.")


def parse_methods(text: str | Sequence[str]) -> list[Method]:
    """Parse a comma-separated list (or a list) of method names; duplicates are an error."""
    items = [t for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ValueError(f"No methods given. Known methods: {_METHOD_HELP}.")
    methods = [parse_method(t) for t in items]
    specs = [m.spec for m in methods]
    if len(set(specs)) != len(specs):
        raise ValueError(f"Method list {specs} names a method twice.")
    return methods


@dataclass
class CompareConfig:
    """Everything that makes two comparisons comparable (methods and seeds may grow between resumes)."""

    task: str = "translation"
    source_lang: str = "en"
    target_lang: str = "fr"
    steps: int = 100
    batch_size: int = 8
    eval_every: int = 25
    warmup_ratio: float = 0.1
    # kind -> lr; kinds left out take DEFAULT_LR. Stored resolved, so a folder never mixes two defaults.
    learning_rates: dict[str, float] = field(default_factory=dict)
    lr_grid: tuple[float, ...] = (1.0,)  # factors tried around each method's lr, chosen on validation loss
    calibration_steps: int = 50
    calibration_lr: float | None = None  # None: the lr of ``full``
    neft_target_modules: tuple[str, ...] = IN_OUT_MODULES
    max_source_tokens: int = 256
    max_target_tokens: int = 128
    max_new_tokens: int = 64
    eval_batch_size: int = 16
    char_level: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Unknown task {self.task!r}; use one of {sorted(TASKS)}.")
        for name in ("steps", "batch_size", "eval_every", "max_new_tokens", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
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


# ---------------------------------------------------------------- methods -> trainable models


def _freeze(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters that will be trained, each once (tied weights are one parameter)."""
    return [p for p in model.parameters() if p.requires_grad]


def prepare_model(model: PreTrainedModel, method: Method, seed: int, scores: Any = None) -> torch.nn.Module:
    """Make ``model`` trainable the way ``method`` says (NeFT needs the calibration ``scores``)."""
    if method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    _freeze(model)
    if method.kind == "embed":
        model.get_input_embeddings().weight.requires_grad_(True)
    elif method.kind == "in-out":
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in IN_OUT_MODULES:
                module.weight.requires_grad_(True)
    elif method.kind == "lora":
        config = LoraConfig(r=method.rank, lora_alpha=2 * method.rank, lora_dropout=0.0, target_modules="all-linear")
        return get_peft_model(model, config)
    elif method.kind == "neft":
        return get_peft_model(model, NeFTConfig(neurons=select_for(model, method, scores, seed)))
    return model


def select_for(model: PreTrainedModel, method: Method, scores: Any, seed: int):
    """The NeFT neuron selection of ``method`` from calibration ``scores``."""
    from .selection import budget_from_lora, select_neurons

    if method.rank is not None:
        return select_neurons(scores, num_params=budget_from_lora(model, r=method.rank), strategy=method.strategy, seed=seed)
    return select_neurons(scores, percent=method.percent, strategy=method.strategy, seed=seed)


# ---------------------------------------------------------------- data, training, evaluation


def _pad(rows: Sequence[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    def column(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], device=device)
    return {"input_ids": column("input_ids", pad_id), "attention_mask": column("attention_mask", 0),
            "labels": column("labels", IGNORE_INDEX)}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def validation_loss(model: torch.nn.Module, rows: Sequence[dict], pad_id: int, batch_size: int) -> float:
    """Mean loss per target token over ``rows``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = _pad(rows[i:i + batch_size], pad_id, _device_of(model))
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**batch).loss) * tokens
        count += tokens
    return total / max(count, 1)


def batch_order(num_rows: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The example indices of each step: reshuffled epochs from a seeded generator, same for every method."""
    generator = torch.Generator().manual_seed(seed)
    flat: list[int] = []
    while len(flat) < steps * batch_size:
        flat.extend(torch.randperm(num_rows, generator=generator).tolist())
    return [flat[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def train(
    model: torch.nn.Module, train_rows: Sequence[dict], val_rows: Sequence[dict], pad_id: int, *,
    steps: int, batch_size: int, lr: float, eval_every: int, warmup_ratio: float, seed: int, desc: str = "train",
    val_batch_size: int = 16,
) -> dict[str, Any]:
    """AdamW with linear warmup and decay; the trainable weights end at their best-validation-loss checkpoint."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError(f"{desc}: nothing to train (no parameter requires grad).")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    device = _device_of(model)
    best = {"loss": math.inf, "step": 0, "weights": None}
    curve, train_seconds = [], 0.0
    bar = tqdm(batch_order(len(train_rows), steps, batch_size, seed), desc=desc, leave=False)
    for step, indices in enumerate(bar, start=1):
        model.train()
        start = time.perf_counter()
        loss = model(**_pad([train_rows[i] for i in indices], pad_id, device)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - start
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % eval_every == 0 or step == steps:
            val = validation_loss(model, val_rows, pad_id, val_batch_size)
            curve.append({"step": step, "val_loss": val, "train_loss": loss.item()})
            if val < best["loss"]:
                best = {"loss": val, "step": step, "weights": [p.detach().clone() for p in params]}
    with torch.no_grad():
        for p, saved in zip(params, best["weights"]):
            p.copy_(saved)
    return {"best_val_loss": best["loss"], "best_step": best["step"], "train_seconds": train_seconds,
            "time_per_step_s": train_seconds / steps, "curve": curve}


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]], *,
             max_new_tokens: int, batch_size: int, desc: str = "generate") -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches, stop at EOS), decoded and stripped."""
    model.eval()
    pad_id, device = tokenizer.pad_token_id, _device_of(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: dict[int, str] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, temperature=None, top_p=None, top_k=None,
                             pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        for i, row in zip(chunk, out[:, width:]):
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return [outputs[i] for i in range(len(prompts))]


def adapter_bytes(model: torch.nn.Module, method: Method) -> int:
    """Size of what must be stored for the method: peft's adapter file, or the trained tensors."""
    if method.kind == "base":
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if method.kind in ("lora", "neft"):
            model.save_pretrained(tmp)
            return (Path(tmp) / "adapter_model.safetensors").stat().st_size
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(Path(tmp) / "trained.safetensors"))
        return (Path(tmp) / "trained.safetensors").stat().st_size


def memory_mb(model: torch.nn.Module) -> tuple[float, str]:
    """Peak CUDA memory when on a GPU; on CPU the exact training state (weights+grads+2 Adam moments)."""
    device = _device_of(model)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda-peak"
    trained = sum(p.numel() * p.element_size() for p in trainable_parameters(model))
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return (frozen + 4 * trained) / 2**20, "weights+grads+adam"


# ---------------------------------------------------------------- the comparison


def _fingerprint(data: dict[str, Dataset]) -> dict[str, Any]:
    out = {}
    for split, table in data.items():
        digest = hashlib.sha256(json.dumps([list(table["source"]), list(table["target"])]).encode()).hexdigest()[:16]
        out[split] = {"rows": len(table), "sha256": digest}
    return out


def _load_results(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    if not path.is_file():
        return {"format": RESULTS_FORMAT, "identity": identity, "runs": {}}
    stored = json.loads(path.read_text())
    if stored.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a peft-neft comparison results file; choose another --out folder.")
    if stored["identity"] != identity:
        old, new = stored["identity"], identity
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = "; ".join(f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}" for k in diff)[:800]
        raise ValueError(
            f"{path.parent} holds results of a different configuration ({detail}). Use a new --out folder, "
            "or rerun with the stored settings to resume."
        )
    return stored


def _save_results(path: Path, results: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1, sort_keys=True))


def run_key(method: Method, seed: int) -> str:
    return f"{method.spec}@seed{seed}"


def compare(
    load_model: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    data: dict[str, Dataset],
    methods: Sequence[Method | str],
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    config: CompareConfig | None = None,
    model_id: str = "",
) -> dict[str, Any]:
    """Train and evaluate every (method, seed) not already in ``out_dir/results.json``; return all results.

    ``data`` has ``train``, ``validation`` and ``test`` datasets with ``source``/``target`` columns.
    ``load_model`` returns a fresh copy of the base model each call.
    """
    config = config or CompareConfig()
    methods = [parse_method(m) if isinstance(m, str) else m for m in methods]
    missing = [s for s in ("train", "validation", "test") if s not in data or len(data[s]) == 0]
    if missing:
        raise ValueError(f"Data split(s) {missing} are missing or empty; give train, validation and test pairs.")
    if not seeds:
        raise ValueError("Give at least one seed.")
    out = Path(out_dir)
    identity = {"config": _jsonable(asdict(config)), "data": _fingerprint(data), "model": model_id}
    results = _load_results(out / "results.json", identity)
    task = TASKS[config.task]
    instruction = task.instruction_for(config.source_lang, config.target_lang)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    encode = lambda t: [encode_for_training(tokenizer, instruction, s, g, config.max_source_tokens,  # noqa: E731
                                            config.max_target_tokens) for s, g in zip(t["source"], t["target"])]
    train_rows, val_rows = encode(data["train"]), encode(data["validation"])
    prompts = [encode_for_generation(tokenizer, instruction, s, config.max_source_tokens) for s in data["test"]["source"]]
    calibrations: dict[int, tuple[Any, dict[str, Any]]] = {}
    total_params = sum(p.numel() for p in load_model().parameters())

    for seed in seeds:
        for method in methods:
            key = run_key(method, seed)
            if key in results["runs"]:
                print(f"[compare] {key}: already done, skipped")
                continue
            if method.kind == "base" and (done_base := next((k for k, r in results["runs"].items()
                                                              if r["kind"] == "base"), None)):
                print(f"[compare] {key}: skipped, the untrained model does not depend on the seed ({done_base})")
                continue
            scores, calibration = None, None
            if method.kind == "neft" and method.strategy == "random":
                scores = _shape_scores(load_model(), config.neft_target_modules)
            elif method.kind == "neft":
                if seed not in calibrations:
                    calibrations[seed] = _calibrate(load_model, train_rows, config, seed, tokenizer.pad_token_id)
                scores, calibration = calibrations[seed]
            row = _run_one(load_model, tokenizer, method, seed, scores, train_rows, val_rows, prompts, data["test"], config,
                           total_params)
            row["calibration"] = calibration
            _write_outputs(_outputs_path(out, key), data["test"], row.pop("hypotheses"))
            results["runs"][key] = row
            _save_results(out / "results.json", results)
            write_report(results, out, [m.spec for m in methods])
            print(f"[compare] {key}: " + ", ".join(f"{k}={row['scores'][k]:.2f}" for k in _metric_names(config.task)))
    write_report(results, out, [m.spec for m in methods])
    return results


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _calibrate(load_model: Callable[[], PreTrainedModel], train_rows: list[dict], config: CompareConfig, seed: int,
               pad_id: int):
    from .calibration import calibrate, pad_collate

    model = load_model()
    lr = config.calibration_lr if config.calibration_lr is not None else config.lr("full")
    start = time.perf_counter()
    scores = calibrate(model, train_rows, steps=config.calibration_steps, target_modules=config.neft_target_modules,
                       lr=lr, batch_size=config.batch_size, seed=seed, collate_fn=pad_collate(pad_id))
    info = {"steps": config.calibration_steps, "lr": lr, "seconds": time.perf_counter() - start,
            "target_modules": list(config.neft_target_modules)}
    del model
    return scores, info


def _shape_scores(model: PreTrainedModel, target_modules: Sequence[str]):
    """Scores that carry only the target modules' shapes: all random rows need, so no calibration is run."""
    from .selection.cosine import score_models

    return replace(score_models(model, model, target_modules), method="none (random rows)")


def _run_one(load_model, tokenizer, method: Method, seed: int, scores, train_rows, val_rows, prompts, test: Dataset,
             config: CompareConfig, total: int) -> dict[str, Any]:
    base_lr = config.lr(method.kind)
    best_model, best_stats, search = None, None, []
    for factor in (config.lr_grid if method.kind != "base" else (1.0,)):
        model = prepare_model(load_model(), method, seed, scores)
        if method.kind == "base":
            stats = {"best_val_loss": validation_loss(model, val_rows, tokenizer.pad_token_id, config.eval_batch_size),
                     "best_step": 0, "train_seconds": 0.0, "time_per_step_s": 0.0, "curve": []}
        else:
            stats = train(model, train_rows, val_rows, tokenizer.pad_token_id, steps=config.steps,
                          batch_size=config.batch_size, lr=base_lr * factor, eval_every=config.eval_every,
                          warmup_ratio=config.warmup_ratio, seed=seed, desc=f"{method.spec} seed {seed} lr {base_lr * factor:g}",
                          val_batch_size=config.eval_batch_size)
        stats["lr"] = base_lr * factor
        search.append({k: stats[k] for k in ("lr", "best_val_loss", "best_step")})
        if best_stats is None or stats["best_val_loss"] < best_stats["best_val_loss"]:
            best_model, best_stats = model, stats
        del model
    start = time.perf_counter()
    hypotheses = generate(best_model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                          batch_size=config.eval_batch_size, desc=f"{method.spec} test")
    eval_seconds = time.perf_counter() - start
    scored = score(config.task, hypotheses, list(test["target"]), char_level=config.char_level)
    trainable = 0 if method.kind == "base" else sum(p.numel() for p in trainable_parameters(best_model))
    mem, mem_kind = memory_mb(best_model)
    return {
        "method": method.spec, "kind": method.kind, "strategy": method.strategy if method.kind == "neft" else None,
        "seed": seed, "lr": best_stats["lr"], "lr_search": search, "steps": 0 if method.kind == "base" else config.steps,
        "best_step": best_stats["best_step"], "best_val_loss": best_stats["best_val_loss"], "curve": best_stats["curve"],
        "trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
        "time_per_step_s": best_stats["time_per_step_s"], "train_seconds": best_stats["train_seconds"],
        "eval_seconds": eval_seconds, "memory_mb": mem, "memory_kind": mem_kind,
        "adapter_bytes": adapter_bytes(best_model, method),
        "scores": {k: v for k, v in scored.items() if k != "signatures"}, "signatures": scored["signatures"],
        "device": str(_device_of(best_model)), "hypotheses": hypotheses,
    }


def _outputs_path(out: Path, key: str) -> Path:
    return out / "outputs" / f"{re.sub(r'[^a-z0-9@.-]+', '_', key)}.jsonl"


def _write_outputs(path: Path, test: Dataset, hypotheses: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for src, ref, hyp in zip(test["source"], test["target"], hypotheses):
                handle.write(json.dumps({"source": src, "reference": ref, "hypothesis": hyp}, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- table and plot


def _metric_names(task: str) -> tuple[str, ...]:
    return ("bleu", "chrf") if task == "translation" else ("rouge1", "rouge2", "rougeL")


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarize(results: dict[str, Any], order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One entry per method: its runs over seeds, with the per-seed values kept for mean ± std."""
    groups: dict[str, list[dict]] = {}
    for row in results["runs"].values():
        groups.setdefault(row["method"], []).append(row)
    names = [m for m in order if m in groups] + sorted(m for m in groups if m not in order)
    return [{"method": m, "runs": sorted(groups[m], key=lambda r: r["seed"])} for m in names]


def markdown_table(results: dict[str, Any], order: Sequence[str] = ()) -> str:
    """The comparison table: mean ± sample std over seeds where there is more than one."""
    task = results["identity"]["config"]["task"]
    metrics = _metric_names(task)
    header = ["method", "trainable params", "% of model", *[m.upper() if m in ("bleu",) else m for m in metrics],
              "seeds", "lr", "train s/step", "memory MB", "adapter MB", "calib. steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in summarize(results, order):
        runs = group["runs"]
        first = runs[0]
        calib = first.get("calibration")
        cells = [group["method"], f"{first['trainable_params']:,}", f"{first['trainable_pct']:.3f}",
                 *[_mean_std([r["scores"][m] for r in runs]) for m in metrics],
                 ",".join(str(r["seed"]) for r in runs), ",".join(sorted({f"{r['lr']:g}" for r in runs})),
                 f"{statistics.mean(r['time_per_step_s'] for r in runs):.3f}",
                 f"{first['memory_mb']:.0f}", f"{first['adapter_bytes'] / 2**20:.2f}",
                 str(calib["steps"]) if calib else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    signatures = {k: v for r in results["runs"].values() for k, v in r["signatures"].items()}
    mem_kinds = sorted({r["memory_kind"] for r in results["runs"].values()})
    notes = [f"Signature ({k}): `{v}`" for k, v in sorted(signatures.items())]
    notes.append(f"memory MB: {', '.join(mem_kinds)}; adapter MB: the stored adapter (peft) or the trained tensors.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Main score vs trainable parameters: NeFT and LoRA as lines, the other methods as points."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = _metric_names(results["identity"]["config"]["task"])[0 if results["identity"]["config"]["task"] == "translation" else 2]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[str, list[tuple[float, float, float]]] = {"NeFT": [], "LoRA": []}
    for group in summarize(results):
        runs = group["runs"]
        values = [r["scores"][metric] for r in runs]
        x = max(runs[0]["trainable_params"], 1)
        y, err = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        kind, strategy = runs[0]["kind"], runs[0].get("strategy")
        if kind == "lora" or (kind == "neft" and strategy == "lowest"):
            lines["LoRA" if kind == "lora" else "NeFT"].append((x, y, err))
        elif kind == "base":
            ax.axhline(y, color="grey", linestyle=":", label="base (no training)")
        else:
            ax.errorbar([x], [y], yerr=[err], fmt="s", capsize=3, label=group["method"])
    for name, points in lines.items():
        if points:
            points.sort()
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                        marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    xs = [max(g["runs"][0]["trainable_params"], 1) for g in summarize(results) if g["runs"][0]["kind"] != "base"]
    if xs:  # a margin of a factor 4 each side keeps points off the edges and the log ticks readable
        ax.set_xlim(min(xs) / 4, max(xs) * 4)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(metric if metric != "bleu" else "BLEU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def paired_baseline(spec: str) -> str | None:
    """What a method is tested against: NeFT against the LoRA rank it matches, an ablation against NeFT."""
    method = parse_method(spec)
    if method.kind != "neft":
        return None
    if method.strategy != "lowest":
        return "neft:" + spec.partition(":")[2]
    return f"lora:{method.rank}" if method.rank else None


def paired_tests(results: dict[str, Any], out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Paired bootstrap tests of each NeFT run against its baseline run of the same seed (stored outputs)."""
    config, rows = results["identity"]["config"], []
    for key, run in results["runs"].items():
        baseline = paired_baseline(run["method"])
        other = f"{baseline}@seed{run['seed']}"
        if baseline is None or other not in results["runs"]:
            continue
        ours, theirs = (_read_outputs(_outputs_path(Path(out_dir), k)) for k in (key, other))
        tests = paired_bootstrap(config["task"], ours["hypothesis"], theirs["hypothesis"], ours["reference"],
                                 char_level=config["char_level"])
        rows.append({"system": run["method"], "baseline": baseline, "seed": run["seed"], "tests": tests})
    return rows


def _read_outputs(path: Path) -> dict[str, list[str]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {field: [line[field] for line in lines] for field in ("reference", "hypothesis")}


def paired_table(results: dict[str, Any], out_dir: str | os.PathLike) -> str:
    """Markdown for :func:`paired_tests`, empty when no run has its baseline yet."""
    rows = paired_tests(results, out_dir)
    if not rows:
        return ""
    metrics = _metric_names(results["identity"]["config"]["task"])
    header = ["system", "baseline", "seed", *[f"Δ {m} (p)" for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: (r["system"], r["seed"])):
        cells = [f"{row['tests'][m]['delta']:+.2f} ({row['tests'][m]['p_value']:.3f})" for m in metrics]
        lines.append("| " + " | ".join([row["system"], row["baseline"], str(row["seed"]), *cells]) + " |")
    return ("\n## Paired tests\n\nEach NeFT run against its baseline run of the same seed, on the same test "
            f"sentences: paired bootstrap resampling ({DEFAULT_SAMPLES} resamples, sacrebleu's test for BLEU/chrF). "
            "p is the chance of a difference this large from resampling the test set alone; it says nothing "
            "about the spread between training seeds.\n\n" + "\n".join(lines) + "\n")


def write_report(results: dict[str, Any], out_dir: str | os.PathLike, order: Sequence[str] = ()) -> str:
    """Write ``results.md`` (table and paired tests) and ``results.png`` next to ``results.json``; return the table."""
    out = Path(out_dir)
    if not results["runs"]:
        return ""
    table = markdown_table(results, order) + paired_table(results, out)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table)
    plot(results, out / "results.png")
    return table
