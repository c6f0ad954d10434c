"""A small CPU reproduction of the paper's Table 1 setting: NeFT with probe-selected neurons vs full FT on XNLI.

SmolLM2-135M-Instruct (the embedded model) is trained on the first ``--train`` English rows of the XNLI dev
split (prompt -> label word, loss on the label only) and tested on the last ``--test`` rows in English,
French and German (the rows are parallel across languages, and the test premises are not in training).
A test example counts as correct when the label word with the highest first-token logit is the gold one.

Methods, all with the same data order, steps and batch size:
  base        no training (zero-shot)
  full        full fine-tuning, AdamW, lr --full-lr
  neft_probe  NeFT on the up_proj/down_proj rows best aligned with ridge probes (probe_scores), --percent % of all
              parameters (the paper's 6 %), AdamW, lr --neft-lr
  neft_random NeFT on random up_proj/down_proj rows of the same parameter budget (a control)

How docs/analysis/xnli_table1*.json were made (2-core CPU, no GPU; XNLI is a folder with the XNLI dev split
as dev-{en,fr,de}.tsv.gz, tab-separated premise / hypothesis / label, e.g. the XTREME-format copy in
github.com/GautamGupta17/MESH; the exact options of each run are in docs/analysis.md):

    OMP_NUM_THREADS=1 python docs/examples/analysis/xnli_probe_table1.py --data XNLI --out docs/analysis/xnli_table1.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import io
import json
import time
from pathlib import Path

import torch
from peft import get_peft_model

import peft_neft
from peft_neft._targets import DEFAULT_TARGET_MODULES
from peft_neft.analysis import probe_scores
from peft_neft.atomic import atomic_path
from peft_neft.embedded_model import load_model_and_tokenizer

LABELS = ("entailment", "neutral", "contradiction")


def read_xnli(folder: Path, lang: str) -> list[tuple[str, str, str]]:
    with gzip.open(folder / f"dev-{lang}.tsv.gz", "rt", encoding="utf-8") as handle:
        return [tuple(row) for row in csv.reader(io.StringIO(handle.read()), delimiter="\t", quoting=csv.QUOTE_NONE)]


def prompt(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise}\nHypothesis: {hypothesis}\nRelation (entailment, neutral or contradiction):"


def label_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer(" " + label)["input_ids"][0] for label in LABELS]
    assert len(set(ids)) == 3, "the label words must start with different tokens"
    return ids


def batch_of(tokenizer, rows, max_length: int = 160, with_answer: bool = True) -> dict[str, torch.Tensor]:
    seqs, labels = [], []
    for premise, hypothesis, label in rows:
        ids = tokenizer(prompt(premise, hypothesis))["input_ids"][: max_length - 4]
        answer = tokenizer(" " + label)["input_ids"] + [tokenizer.eos_token_id] if with_answer else []
        seqs.append(ids + answer)
        labels.append([-100] * len(ids) + answer)
    width = max(map(len, seqs))
    out = {"input_ids": torch.full((len(seqs), width), tokenizer.pad_token_id),
           "attention_mask": torch.zeros(len(seqs), width, dtype=torch.long),
           "labels": torch.full((len(seqs), width), -100)}
    for i, (s, l) in enumerate(zip(seqs, labels)):
        out["input_ids"][i, :len(s)] = torch.tensor(s)
        out["attention_mask"][i, :len(s)] = 1
        out["labels"][i, :len(s)] = torch.tensor(l)
    return out


def train(model, tokenizer, rows, steps: int, lr: float, batch_size: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist() * (1 + steps * batch_size // len(rows))
    model.train()
    losses = []
    for step in range(steps):
        batch = batch_of(tokenizer, [rows[i] for i in order[step * batch_size:(step + 1) * batch_size]])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
        print(f"  step {step + 1}/{steps} loss {losses[-1]}", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model, tokenizer, rows, batch_size: int = 16) -> float:
    ids = label_token_ids(tokenizer)
    gold = torch.tensor([LABELS.index(r[2]) for r in rows])
    predictions = []
    for start in range(0, len(rows), batch_size):
        batch = batch_of(tokenizer, rows[start:start + batch_size], with_answer=False)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        last = batch["attention_mask"].sum(1) - 1
        predictions.append(logits[torch.arange(len(last)), last][:, ids].argmax(1))
    return float((torch.cat(predictions) == gold).float().mean())


def random_rows(model, names, budget: int, seed: int = 0) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    cost = torch.cat([torch.full((modules[n].out_features,), modules[n].in_features) for n in names])
    owner = torch.cat([torch.full((modules[n].out_features,), i) for i, n in enumerate(names)])
    row = torch.cat([torch.arange(modules[n].out_features) for n in names])
    order = torch.randperm(cost.numel(), generator=torch.Generator().manual_seed(seed))
    keep = order[cost[order].cumsum(0) <= budget]
    return {n: row[keep][owner[keep] == i].sort().values for i, n in enumerate(names) if (owner[keep] == i).any()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with XNLI's dev-{lang}.tsv.gz")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--percent", type=float, default=6.0)
    parser.add_argument("--full-lr", type=float, default=1e-5)
    parser.add_argument("--neft-lr", type=float, default=1e-4)
    parser.add_argument("--methods", nargs="+", default=["base", "full", "neft_probe", "neft_random"])
    parser.add_argument("--langs", nargs="+", default=["en", "fr", "de"])
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tokenizer = load_model_and_tokenizer(None)
    english = read_xnli(args.data, "en")
    train_rows = english[: args.train]
    tests = {lang: read_xnli(args.data, lang)[-args.test:] for lang in args.langs}
    total = sum(p.numel() for p in base.parameters())
    budget = int(total * args.percent / 100)
    started = time.time()
    scores = probe_scores(base, [prompt(p, h) for p, h, _ in train_rows], [l for *_, l in train_rows],
                          tokenizer=tokenizer)
    selection = peft_neft.select_neurons(scores, num_params=budget)
    probe_seconds = time.time() - started
    results = {"args": vars(args), "total_params": total, "probe": {
        "seconds": round(probe_seconds, 1), "neurons": selection.num_neurons, "params": selection.num_params,
        "per_module_type": {t: sum(int(r.numel()) for n, r in selection.rows.items() if n.endswith(t))
                            for t in DEFAULT_TARGET_MODULES},
        "mean_probe_train_accuracy": sum(scores.metadata["probe_train_accuracy"].values())
        / len(scores.metadata["probe_train_accuracy"])}, "methods": {}}
    for method in args.methods:
        print(method, flush=True)
        started = time.time()
        model, losses = copy.deepcopy(base), []
        if method == "full":
            losses = train(model, tokenizer, train_rows, args.steps, args.full_lr, args.batch_size)
        elif method.startswith("neft"):
            rows = selection.rows if method == "neft_probe" else random_rows(base, list(selection.scores), budget)
            model = get_peft_model(model, peft_neft.NeFTConfig(neurons=rows))
            losses = train(model, tokenizer, train_rows, args.steps, args.neft_lr, args.batch_size)
            model = model.merge_and_unload()
        scores = {lang: round(100 * accuracy(model, tokenizer, rows), 1) for lang, rows in tests.items()}
        results["methods"][method] = {"accuracy": scores, "losses": losses, "seconds": round(time.time() - started, 1)}
        print(method, scores, flush=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
        del model


if __name__ == "__main__":
    main()
