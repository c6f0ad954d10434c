"""``peft-neft calibrate``: run the short calibration fine-tune (or the gradient score) and select neurons."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

NAME = "calibrate"
HELP = "Score neurons with a short fine-tune of K steps on your data (or gradient norms) and select a budget of them."

_FIELDS = (("prompt", "completion"), ("source", "target"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._selection_options import add_selection_arguments

    parser.add_argument("--model", default="default", help="transformers folder, or 'default' (embedded SmolLM2-135M)")
    parser.add_argument("--data", required=True,
                        help="JSON lines (.jsonl or .jsonl.gz) with 'prompt'/'completion' or 'source'/'target' text")
    parser.add_argument("--steps", type=int, default=800, help="fine-tuning steps K (gradient: batches)")
    parser.add_argument("--method", choices=["cosine", "gradient"], default="cosine",
                        help="cosine: short fine-tune then Eq. 1 (paper); gradient: gradient norms, no update")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate of the calibration fine-tune")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--max-length", type=int, default=256, help="truncate examples to this many tokens")
    parser.add_argument("--max-examples", type=int, help="use only the first N examples")
    parser.add_argument("--frugal", action="store_true", help="train only the target modules (less memory)")
    add_selection_arguments(parser)


def read_pairs(path: str | Path, max_examples: int | None = None) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from JSON lines with 'prompt'/'completion' or 'source'/'target' fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {str(path)!r}.")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON: {err}") from err
            fields = next((f for f in _FIELDS if isinstance(record, dict) and all(k in record for k in f)), None)
            if fields is None:
                raise ValueError(f"{path}:{number} needs 'prompt' and 'completion' (or 'source' and 'target') fields.")
            pairs.append((str(record[fields[0]]), str(record[fields[1]])))
            if max_examples is not None and len(pairs) == max_examples:
                break
    if not pairs:
        raise ValueError(f"{path} holds no examples.")
    return pairs


def run(args: argparse.Namespace) -> int:
    from ..calibration import calibrate, gradient_scores, tokenize_pair
    from ..models import load_model_and_tokenizer
    from ._selection_options import select_and_save

    pairs = read_pairs(args.data, args.max_examples)
    model, tokenizer = load_model_and_tokenizer(None if args.model == "default" else args.model)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    dataset = [tokenize_pair(tokenizer, p, c, args.max_length) for p, c in pairs]
    if args.method == "cosine":
        scores = calibrate(model, dataset, steps=args.steps, target_modules=args.target_modules, lr=args.lr,
                           batch_size=args.batch_size, seed=args.seed, frugal=args.frugal)
    else:
        scores = gradient_scores(model, dataset, batches=args.steps, target_modules=args.target_modules,
                                 batch_size=args.batch_size, seed=args.seed)
    scores.metadata.update(model=str(args.model), data=str(args.data), examples=len(dataset))
    select_and_save(args, scores, lambda: model)
    return 0
