"""How stable is the neuron selection? Overlap (paper Table 5) between selections from different calibrations.

Calibrates SmolLM2-135M-Instruct on Multi30k en->fr pairs for K steps (smaller K are scored on the way,
as separate calibrate() runs with the same seed would give), once on other pairs, and with the gradient
score, then prints the overlap of each NeFT_x% selection with the one from the longest run.

    python benchmarks/selection_overlap.py --pairs 64 --steps 1 2 5 10 --other-steps 5 --out /tmp/overlap.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from peft_neft.atomic import atomic_path
from peft_neft.embedded_model import load_model_and_tokenizer
from peft_neft.selection import NeuronScores, calibrate, gradient_scores, overlap, select_neurons
from peft_neft.tasks import TASKS, encode_pairs, make_collator
from peft_neft._shapes import weight_rows
from peft_neft._targets import DEFAULT_TARGET_MODULES, find_target_modules
from peft_neft.selection.cosine import cosine_rows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def pairs(start: int, count: int) -> tuple[list[str], list[str]]:
    """English sources and French targets of Multi30k training pairs ``start`` to ``start + count``."""
    with gzip.open(DATA / "train.en.gz", "rt") as en, gzip.open(DATA / "train.fr.gz", "rt") as fr:
        lines = list(zip(en, fr))[start:start + count]
    return [e.strip() for e, _ in lines], [f.strip() for _, f in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--other-steps", type=int, help="K of the run on other pairs (default: the largest K)")
    parser.add_argument("--gradient-batches", type=int, default=16)
    parser.add_argument("--percents", type=float, nargs="+", default=[1.0, 3.0, 6.0, 9.0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_model_and_tokenizer(None)
    instruction, collate = TASKS["translation"].instruction_for("en", "fr"), make_collator(tokenizer)
    first = encode_pairs(tokenizer, instruction, *pairs(0, args.pairs), 64, 32)  # as compare trains on them
    other = encode_pairs(tokenizer, instruction, *pairs(args.pairs, args.pairs), 64, 32)
    runs, seconds = {}, {}
    targets = find_target_modules(model, DEFAULT_TARGET_MODULES)
    before = {name: weight_rows(m).detach().clone() for name, m in targets.items()}
    start = time.perf_counter()

    def score_intermediate(step: int, loss: float) -> None:  # K < max: the same run, scored on the way
        if step in args.steps and step != max(args.steps):
            scores = {name: cosine_rows(before[name], weight_rows(m)) for name, m in targets.items()}
            runs[f"K={step}"] = NeuronScores(scores, in_features, total, "cosine")
            seconds[f"K={step}"] = time.perf_counter() - start

    in_features = {name: m.in_features for name, m in targets.items()}
    total = model.num_parameters()
    k = max(args.steps)
    final = calibrate(model, first, collate_fn=collate, steps=k, lr=args.lr, batch_size=args.batch_size,
                      progress=False, callback=score_intermediate)
    runs[f"K={k}"], seconds[f"K={k}"] = final, time.perf_counter() - start
    other_k = args.other_steps or k
    start = time.perf_counter()
    runs[f"K={other_k} other data"] = calibrate(model, other, collate_fn=collate, steps=other_k, lr=args.lr,
                                                batch_size=args.batch_size, progress=False)
    seconds[f"K={other_k} other data"] = time.perf_counter() - start
    start = time.perf_counter()
    runs["gradient"] = gradient_scores(model, first, collate_fn=collate, batches=args.gradient_batches,
                                       batch_size=args.batch_size)
    seconds["gradient"] = time.perf_counter() - start
    # After a few AdamW steps every weight has moved by about lr, so 1 - cos ~ lr^2 * in / |row|^2:
    # check how much of the selection the row norms alone predict, and a norm-relative gradient score.
    norms = {name: weight_rows(m).detach().double().norm(dim=1) for name, m in targets.items()}
    runs["row norm"] = NeuronScores(norms, in_features, total, "row-norm")
    runs["gradient/norm"] = NeuronScores({n: runs["gradient"].scores[n] / norms[n] for n in norms}, in_features, total,
                                         "relative-gradient")
    reference = f"K={k}"
    first_k = min(args.steps)
    pairs_compared = [(f"K={j}", reference) for j in sorted(args.steps) if j != k]
    pairs_compared += [(f"K={other_k} other data", f"K={other_k}"), ("gradient", reference),
                       ("gradient/norm", reference), ("row norm", f"K={first_k}"), ("row norm", reference)]
    table = {}
    for percent in args.percents:
        selected = {name: select_neurons(s, percent=percent) for name, s in runs.items()}
        row = {f"{a} vs {b}": overlap(selected[a], selected[b]) for a, b in pairs_compared}
        row[f"random vs {reference}"] = overlap(selected[reference],
                                                select_neurons(runs[reference], percent=percent, strategy="random"))
        table[percent] = row
    print(f"overlap of NeFT_x% selections ({args.pairs} pairs, batch {args.batch_size}, lr {args.lr})")
    for percent, row in table.items():
        print(f"x={percent}%: " + ", ".join(f"{name} {100 * value:.1f}%" for name, value in row.items()))
    print("seconds: " + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()))
    losses = {n: s.metadata.get("losses") for n, s in runs.items() if s.metadata.get("losses")}
    print("losses: " + json.dumps(losses))
    result = {"args": vars(args), "overlap": table, "seconds": seconds, "losses": losses}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
