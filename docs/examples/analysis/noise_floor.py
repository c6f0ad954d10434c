"""Sampling noise floor of ΔRank: the SAME model scored on two disjoint sets of inputs.

Any ΔRank between two models measured on N inputs includes this much noise from the finite sample.

How docs/analysis/noise_floor.json was made (2-core CPU, no GPU; test_2016_flickr.en.gz is Multi30k's
data/task1/raw/test_2016_flickr.en.gz from github.com/multi30k/dataset):

    OMP_NUM_THREADS=1 python docs/examples/analysis/noise_floor.py --data test_2016_flickr.en.gz --count 256 \
        --out docs/analysis/noise_floor.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from peft_neft.analysis import compare_utilization, load_texts, neuron_pearson_scores
from peft_neft.embedded_model import load_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="one English sentence a line (.gz allowed)")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    texts = load_texts(args.data, limit=2 * args.count)
    model, tokenizer = load_model_and_tokenizer(None)
    first = neuron_pearson_scores(model, model, texts[: args.count], tokenizer)
    second = neuron_pearson_scores(model, model, texts[args.count:], tokenizer)
    mixed = dataclasses.replace(first, scores_b=second.scores_a)
    report = compare_utilization(mixed)
    summary = {k: v for k, v in report.summary().items() if k in ("num_neurons", "avg_abs_delta_rank",
                                                                    "strong_threshold", "category_counts", "buckets")}
    summary["inputs"] = {"first": f"{args.data.name} lines 1-{args.count}", "second": f"lines {args.count + 1}-{2 * args.count}"}
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
