"""``peft-neft compare``: train and evaluate methods side by side on one task (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import (UsageError, add_comparison_arguments, add_config_argument, add_overwrite_argument,
                       check_data, check_methods, check_out_folder, check_report_to, compare_config, has_matplotlib,
                       number, resume_note, run_comparison)

NAME = "compare"
HELP = "Compare NeFT, LoRA and full/partial fine-tuning on one task: results.json, a table and a plot."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--model", default="default", help="transformers folder, or 'default' (embedded SmolLM2-135M)")
    parser.add_argument("--train", nargs="+", required=True, metavar="DATA",
                        help="training pairs: SOURCE TARGET line-aligned text files (.gz ok), one .jsonl(.gz), or a "
                             "datasets dataset (a save_to_disk folder or a Hub name; of a DatasetDict, its train "
                             "split)")
    parser.add_argument("--eval", nargs="+", required=True, metavar="DATA",
                        help="test pairs, as --train (of a DatasetDict, its test split)")
    parser.add_argument("--validation", nargs="+", metavar="DATA",
                        help="validation pairs, as --train (of a DatasetDict, its validation split; default: the "
                             "last 10%% of --train, at most 200)")
    parser.add_argument("--source-field", help="field of the input (default: source / document)")
    parser.add_argument("--target-field", help="field of the output (default: target / summary)")
    parser.add_argument("--limit-train", type=number(int, at_least=1), help="use the first N training pairs")
    parser.add_argument("--limit-validation", type=number(int, at_least=1), help="use the first N validation pairs")
    parser.add_argument("--limit-eval", type=number(int, at_least=1), help="use the first N test pairs")
    parser.add_argument("--methods", required=True,
                        help="comma-separated: base, full, embed, in-out, lora:R, neft:P, neft:match-lora:R, "
                             "neft-random:..., neft-reversed:...; a NeFT variant names its score, spread and targets: "
                             "neft[score=gradient,spread=module,targets=all-linear]:match-lora:8, or rows from a calibration "
                             "computed elsewhere: neft[calibration=NAME]:match-lora:8 with --stored-calibration "
                             "NAME=FILE (README: Comparing NeFT and LoRA)")
    parser.add_argument("--out", "--output-dir", required=True,
                        help="results folder; rerun with the same settings to resume")
    add_overwrite_argument(parser, "the results")
    add_comparison_arguments(parser)


def _check_files(args: argparse.Namespace) -> dict[str, str]:
    """The data read, ``path -> what it is``; more than two for a split is a usage error."""
    inputs = {}
    for flag in ("--train", "--eval", "--validation"):
        files = getattr(args, flag[2:]) or []
        if len(files) > 2:
            raise UsageError(f"{flag}: give one .jsonl file or dataset, or a SOURCE TARGET pair of text files, not "
                             f"{len(files)}.")
        for file in files:
            inputs.setdefault(file, f"data file ({flag})")
    if args.model != "default":
        inputs[args.model] = "model (--model)"
    return inputs


def _pairs(files: list[str], split: str, task, args: argparse.Namespace, limit: int | None):
    from ..tasks import load_pairs

    return load_pairs(files[0], files[1] if len(files) == 2 else None, split=split,
                      source_field=args.source_field or task.source_field,
                      target_field=args.target_field or task.target_field, limit=limit)


def _data_name(args: argparse.Namespace) -> str:
    """Where the pairs came from, for the saved adapters' cards: each split's file or dataset names (no folders)."""
    named = {"train": args.train, "validation": args.validation, "test": args.eval}
    return "; ".join(f"{split}: {' + '.join(Path(str(f)).name for f in files)}" for split, files in named.items() if files)


def run(args: argparse.Namespace) -> int:
    inputs = _check_files(args)
    check_report_to(args.report_to)
    check_out_folder(args.out, inputs, args.overwrite)
    for flag in ("--train", "--validation", "--eval"):  # before torch is imported (check_methods imports it)
        check_data(flag, getattr(args, flag[2:]) or [])
    check_methods(args.methods)
    config, precision = compare_config(args)
    from ..embedded_model import resolve_model_path
    from ..tasks import TASKS, hold_out_validation

    task = TASKS[config.task]
    train = _pairs(args.train, "train", task, args, args.limit_train)
    if args.validation:
        validation = _pairs(args.validation, "validation", task, args, args.limit_validation)
    else:
        train, validation = hold_out_validation(train)
    test = _pairs(args.eval, "test", task, args, args.limit_eval)
    run_comparison(args, config, precision, {"train": train, "validation": validation, "test": test},
                   resolve_model_path(args.model), model_id=str(args.model), data_name=_data_name(args))
    print(f"results, table and plot written to {args.out}/" if has_matplotlib()
          else f"results and table written to {args.out}/ (no plot: matplotlib is not installed)")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    return resume_note(args)
