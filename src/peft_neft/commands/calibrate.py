"""``peft-neft calibrate``: score neurons on your task's data and select a budget of them, once.

A thin shell: the data are read and encoded as ``peft-neft compare`` reads and encodes them for
training (the task's fields, instruction and chat template, :mod:`peft_neft.tasks.prompts`), so the
neurons are scored on exactly the prompts they will be trained on. ``--method`` is a scorer of the
library's registry (:data:`~peft_neft.selection.scorers.SCORERS`). The budget is made once and checked
against the model before scoring. Every argument is checked before any work.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

from ..selection.scorers import SCORERS, get_scorer
from ..tasks.task import TASKS
from ._options import add_config_argument, add_device_arguments, check_data, check_device, number
from ._selection_options import check_selection_arguments

NAME = "calibrate"
HELP = "Score neurons on your data (a short fine-tune, or gradients or activations over K batches); select a budget."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._selection_options import add_selection_arguments

    add_config_argument(parser)
    parser.add_argument("--model", default="default", help="transformers folder, or 'default' (embedded SmolLM2-135M)")
    parser.add_argument("--data", required=True,
                        help="training pairs as compare reads them: .jsonl(.gz) with the task's fields, or a datasets "
                             "dataset (a save_to_disk folder or a Hub name; of a DatasetDict, its train split)")
    parser.add_argument("--task", choices=sorted(TASKS), default="translation",
                        help="the task whose fields, instruction and prompt template encode the data")
    parser.add_argument("--source-field", help="field of the input (default: the task's, source / document)")
    parser.add_argument("--target-field", help="field of the output (default: the task's, target / summary)")
    parser.add_argument("--source-lang", default="en", help="source language code, used in the prompt")
    parser.add_argument("--target-lang", default="fr", help="target language code, used in the prompt")
    parser.add_argument("--steps", "--max-steps", type=number(int, at_least=1), default=800,
                        help="fine-tuning steps K (scorers without an optimizer: batches)")
    parser.add_argument("--method", choices=sorted(SCORERS), default="cosine",
                        help="; ".join(f"{name}: {scorer.help}" for name, scorer in SCORERS.items()))
    parser.add_argument("--lr", "--learning-rate", type=number(float, above=0), default=1e-5,
                        help="learning rate of the calibration fine-tune (cosine, movement)")
    parser.add_argument("--batch-size", "--per-device-train-batch-size", type=number(int, at_least=1), default=8,
                        help="examples per step")
    parser.add_argument("--max-source-tokens", type=number(int, at_least=1), default=256,
                        help="truncate inputs to this many tokens")
    parser.add_argument("--max-target-tokens", type=number(int, at_least=1), default=128,
                        help="truncate targets to this many tokens")
    parser.add_argument("--max-examples", type=number(int, at_least=1), help="use only the first N examples")
    parser.add_argument("--frugal", action="store_true", help="fine-tune only the target modules (cosine, movement: less memory)")
    add_selection_arguments(parser)
    add_device_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible values and an unsafe output before anything is loaded or trained (the budget and the
    output: ``check_selection_arguments``). A missing data file is refused first, before torch is imported."""
    check_data("--data", [args.data])
    inputs = {args.data: "data file (--data)"}
    if args.model != "default":
        inputs[args.model] = "model (--model)"
    check_selection_arguments(args, inputs)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    precision = check_device(args.device, args.dtype)  # resolved once, before anything loads
    from ._selection_options import budget_of, save_selection

    budget = budget_of(args) if args.lora_rank is None else None
    from ..embedded_model import load_model_and_tokenizer
    from ..tasks import encode_pairs, get_task, load_pairs, make_collator

    task = get_task(args.task)
    pairs = load_pairs(args.data, source_field=args.source_field or task.source_field,
                       target_field=args.target_field or task.target_field, limit=args.max_examples)
    model, tokenizer = load_model_and_tokenizer(None if args.model == "default" else args.model)
    budget = budget or budget_of(args, model)
    rows = encode_pairs(tokenizer, task.instruction_for(args.source_lang, args.target_lang), pairs["source"],
                        pairs["target"], args.max_source_tokens, args.max_target_tokens)
    from ..selection import select_neurons

    scorer = get_scorer(args.method)
    model = model.to(precision.device)
    budget.check_fits(model, args.target_modules)  # before the scoring, which may be long
    # The fine-tune runs in float32 whatever --dtype (docs/precision.md): bf16 rounding reorders the tiny row
    # changes it ranks; gradient and forward probes run under --dtype's autocast.
    with nullcontext() if scorer.needs == "optimizer" else precision.autocast():
        scores = scorer.score(model, rows, collate_fn=make_collator(tokenizer), steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              target_modules=args.target_modules, frugal=args.frugal, progress=args.progress)
    selection = select_neurons(scores, budget=budget, strategy=args.strategy, seed=args.seed, spread=args.spread)
    selection.metadata["scores_metadata"].update(model=str(args.model), data=str(args.data), examples=len(rows),
                                                 task=args.task)
    save_selection(args, selection)
    return 0
