"""``peft-neft compare``: train and evaluate methods side by side on one task (resumable)."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..tasks.task import TASKS

NAME = "compare"
HELP = "Compare NeFT, LoRA and full/partial fine-tuning on one task: results.json, a table and a plot."


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _learning_rate(text: str) -> tuple[str, float]:
    kind, _, value = text.partition("=")
    try:
        return kind.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=LR such as lora=1e-3, got {text!r}") from None


@contextmanager
def console_logs() -> Iterator[None]:
    """Show the library's log records (at the level ``--log-level`` set) on stdout while a command runs."""
    package = logging.getLogger("peft_neft")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    propagate = package.propagate
    package.addHandler(handler)
    package.propagate = False  # shown here, not a second time by the root handler on stderr
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.propagate = propagate


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``, shared by every command that runs a model."""
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="frozen weights and autocast dtype; auto: bfloat16 where the hardware has native bf16 "
                             "matrix math (CUDA, AVX512-BF16/AMX CPUs), float32 elsewhere")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that trains on a task (also the scale flags of ``demo``)."""
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run at most")
    parser.add_argument("--epochs", type=float, default=None,
                        help="passes over the training data at most; a run ends at whichever limit comes first")
    parser.add_argument("--patience", type=int, default=3,
                        help="stop a run after N evaluations without a lower validation loss (0: never)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1,
                        help="micro-batches per optimizer step")
    parser.add_argument("--eval-every", type=int, default=25, help="validation loss every N steps, the best is kept")
    parser.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds")
    parser.add_argument("--lr", type=_learning_rate, action="append", default=[], metavar="KIND=LR",
                        help="learning rate of a method kind (repeatable); kinds not given use peft_neft.compare.DEFAULT_LR")
    parser.add_argument("--lr-grid", type=_floats, default=(1.0,),
                        help="factors tried around each method's lr, the best on validation loss wins, e.g. 0.33,1,3")
    parser.add_argument("--calibration-steps", type=int, default=50, help="full fine-tuning steps that score neurons")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="greedy generation length limit, all methods")
    parser.add_argument("--eval-batch-size", type=int, default=16,
                        help="sequences per batch for validation loss and greedy decoding")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    parser.add_argument("--report-to", default="none",
                        help="where Trainer logs training: none, tensorboard, wandb, all")
    add_device_arguments(parser)


def config_arguments(args: argparse.Namespace) -> dict:
    """The :class:`~peft_neft.compare.CompareConfig` fields the shared options set."""
    return dict(max_steps=args.steps, epochs=args.epochs, patience=args.patience or None, batch_size=args.batch_size,
                gradient_accumulation_steps=args.gradient_accumulation_steps, eval_every=args.eval_every,
                learning_rates=dict(args.lr), lr_grid=args.lr_grid, calibration_steps=args.calibration_steps,
                max_new_tokens=args.max_new_tokens, eval_batch_size=args.eval_batch_size, device=args.device,
                dtype=args.dtype, report_to=args.report_to)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="transformers folder, or 'default' (embedded SmolLM2-135M)")
    parser.add_argument("--task", choices=sorted(TASKS), default="translation",
                        help="; ".join(f"{t.name}: {', '.join(t.metric_names)}" for t in TASKS.values()))
    parser.add_argument("--train", nargs="+", required=True, metavar="FILE",
                        help="training pairs: SOURCE TARGET line-aligned text files (.gz ok), or one .jsonl(.gz)")
    parser.add_argument("--eval", nargs="+", required=True, metavar="FILE", help="test pairs, as --train")
    parser.add_argument("--validation", nargs="+", metavar="FILE",
                        help="validation pairs, as --train (default: the last 10%% of --train, at most 200)")
    parser.add_argument("--source-field", help="JSON field of the input (default: source / document)")
    parser.add_argument("--target-field", help="JSON field of the output (default: target / summary)")
    parser.add_argument("--source-lang", default="en", help="source language code, used in the prompt")
    parser.add_argument("--target-lang", default="fr", help="target language code, used in the prompt")
    parser.add_argument("--limit-train", type=int, help="use the first N training pairs")
    parser.add_argument("--limit-validation", type=int, help="use the first N validation pairs")
    parser.add_argument("--limit-eval", type=int, help="use the first N test pairs")
    parser.add_argument("--methods", required=True,
                        help="comma-separated: base, full, embed, in-out, lora:R, neft:P, neft:match-lora:R, "
                             "neft-random:..., neft-reversed:...")
    parser.add_argument("--char-level", action="store_true", help="ROUGE on characters (Chinese and other unsegmented targets)")
    parser.add_argument("--max-source-tokens", type=int, default=256, help="truncate inputs to this many tokens")
    parser.add_argument("--max-target-tokens", type=int, default=128, help="truncate training targets to this many tokens")
    parser.add_argument("--out", required=True, help="results folder; rerun with the same settings to resume")
    parser.add_argument("--workers", type=int, default=1,
                        help="trainings side by side in separate processes, torch's threads shared out among them")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="where trainings checkpoint at each evaluation (default: OUT/checkpoints)")
    parser.add_argument("--save-adapters", choices=["best", "all", "none"], default="best",
                        help="adapters kept in OUT/adapters: each method's best run on validation loss, all, or none")
    add_data_arguments(parser)


def _pairs(files: list[str], task, args, limit: int | None):
    from ..tasks import load_pairs

    if len(files) > 2:
        raise ValueError(f"Give one .jsonl file or a SOURCE TARGET pair of text files, not {len(files)} files.")
    return load_pairs(files[0], files[1] if len(files) == 2 else None,
                      source_field=args.source_field or task.source_field,
                      target_field=args.target_field or task.target_field, limit=limit)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from ..compare import CompareConfig, compare, parse_methods
    from ..training.precision import Precision
    from ..models import load_model_and_tokenizer, resolve_model_path
    from ..tasks import hold_out_validation

    methods = parse_methods(args.methods)  # fail on a bad name before loading anything
    config = CompareConfig(task=args.task, source_lang=args.source_lang, target_lang=args.target_lang,
                           max_source_tokens=args.max_source_tokens, max_target_tokens=args.max_target_tokens,
                           char_level=args.char_level, workers=args.workers, checkpoint_dir=args.checkpoint_dir,
                           save_adapters=args.save_adapters, **config_arguments(args))
    precision = Precision.resolve(config.device, config.dtype)  # a flag this machine cannot honour fails here
    if args.threads:
        torch.set_num_threads(args.threads)
    task = TASKS[args.task]
    train = _pairs(args.train, task, args, args.limit_train)
    if args.validation:
        validation = _pairs(args.validation, task, args, args.limit_validation)
    else:
        train, validation = hold_out_validation(train)
    test = _pairs(args.eval, task, args, args.limit_eval)
    path = resolve_model_path(args.model)
    _, tokenizer = load_model_and_tokenizer(path)
    with console_logs():
        compare(functools.partial(AutoModelForCausalLM.from_pretrained, path, dtype=torch.float32), tokenizer,
                {"train": train, "validation": validation, "test": test}, methods, args.seeds, args.out,
                config, model_id=str(args.model), progress=args.progress, precision=precision)
    print(Path(args.out, "results.md").read_text(encoding="utf-8"), end="")  # table and paired tests
    print(f"results, table and plot written to {args.out}/")
    return 0
