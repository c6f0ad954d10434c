"""Train the SmolLM2 models that docs/analysis.md analyses: NeFT_3% and NeFT_3%+Reversed_3% on Multi30k en->de.

Selection as in the paper (section 4): a short full fine-tune (calibration), then the cosine similarity of
every up_proj/down_proj row before and after it; NeFT_x% takes the rows with the LOWEST similarity until
x% of all model parameters are covered, Reversed_x% the rows with the HIGHEST similarity (section 6.2).
Each selection is trained with peft + NeFTConfig, merged (merge_and_unload) and saved as a plain
transformers folder, next to its saved NeuronSelection.

How the models of docs/analysis.md were made (2-core CPU, no GPU; MULTI30K is a folder with Multi30k's
data/task1/raw/train.{en,de}.gz from github.com/multi30k/dataset):

    OMP_NUM_THREADS=1 python docs/examples/analysis/train_multi30k_neft.py --data MULTI30K --out /tmp/neft_m30k
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
from pathlib import Path

import torch
from peft import get_peft_model

import peft_neft
from peft_neft._targets import DEFAULT_TARGET_MODULES as TARGETS
from peft_neft.embedded_model import load_model_and_tokenizer



def read_lines(folder: Path, name: str, limit: int) -> list[str]:
    with gzip.open(folder / name, "rt", encoding="utf-8") as handle:
        return [next(handle).strip() for _ in range(limit)]


def encode(tokenizer, en: list[str], de: list[str], max_length: int = 96) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per pair; the prompt tokens are masked out of the loss with -100."""
    examples = []
    for source, target in zip(en, de):
        prompt = tokenizer(f"Translate English to German.\nEnglish: {source}\nGerman:")["input_ids"]
        answer = tokenizer(f" {target}")["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + answer)[:max_length]
        examples.append((ids, ([-100] * len(prompt) + answer)[:max_length]))
    return examples


def collate(chunk, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in chunk)
    batch = {"input_ids": torch.full((len(chunk), width), pad_id), "labels": torch.full((len(chunk), width), -100),
             "attention_mask": torch.zeros(len(chunk), width, dtype=torch.long)}
    for row, (ids, labels) in enumerate(chunk):
        batch["input_ids"][row, :len(ids)] = torch.tensor(ids)
        batch["labels"][row, :len(ids)] = torch.tensor(labels)
        batch["attention_mask"][row, :len(ids)] = 1
    return batch


def train(model, examples, steps: int, lr: float, batch_size: int, pad_id: int, seed: int = 0) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(steps):
        order = torch.randperm(len(examples), generator=generator)[:batch_size].tolist()
        loss = model(**collate([examples[i] for i in order], pad_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
        print(f"step {step + 1}/{steps} loss {losses[-1]:.4f}", flush=True)
    model.eval()
    return losses


def row_cosines(base, tuned) -> dict[str, torch.Tensor]:
    tuned_modules = dict(tuned.named_modules())
    cosines = {}
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS):
            w0, w1 = module.weight.double(), tuned_modules[name].weight.double()
            cosines[name] = torch.nn.functional.cosine_similarity(w0, w1, dim=1)
    return cosines


def pick(cosines: dict[str, torch.Tensor], in_features: dict[str, int], budget: int, lowest: bool) -> dict[str, torch.Tensor]:
    """Rows in global cosine order (lowest or highest first) until ``budget`` parameters are covered."""
    names = list(cosines)
    flat = torch.cat([cosines[n] for n in names])
    cost = torch.cat([torch.full((cosines[n].numel(),), in_features[n]) for n in names])
    owner = torch.cat([torch.full((cosines[n].numel(),), i) for i, n in enumerate(names)])
    row = torch.cat([torch.arange(cosines[n].numel()) for n in names])
    order = torch.argsort(flat, descending=not lowest, stable=True)
    keep = order[cost[order].cumsum(0) <= budget]
    return {n: row[keep][owner[keep] == i].sort().values for i, n in enumerate(names) if (owner[keep] == i).any()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with Multi30k's train.en.gz and train.de.gz")
    parser.add_argument("--out", required=True)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--calib-steps", type=int, default=16)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--percent", type=float, default=3.0)
    parser.add_argument("--calib-lr", type=float, default=2e-5)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)
    base, tokenizer = load_model_and_tokenizer(None)
    examples = encode(tokenizer, read_lines(args.data, "train.en.gz", args.examples),
                       read_lines(args.data, "train.de.gz", args.examples))
    pad_id = tokenizer.pad_token_id
    total = sum(p.numel() for p in base.parameters())
    budget = int(total * args.percent / 100)

    calibrated = copy.deepcopy(base)
    calib_losses = train(calibrated, examples, args.calib_steps, args.calib_lr, args.batch_size, pad_id)
    cosines = row_cosines(base, calibrated)
    del calibrated
    in_features = {n: m.in_features for n, m in base.named_modules() if n in cosines}
    low = pick(cosines, in_features, budget, lowest=True)
    high = pick(cosines, in_features, budget, lowest=False)
    both = {n: torch.cat([low.get(n, torch.empty(0, dtype=torch.long)), high.get(n, torch.empty(0, dtype=torch.long))]).unique()
            for n in sorted(set(low) | set(high))}
    summary = {"total_params": total, "budget_params_per_part": budget, "calibration_losses": calib_losses,
               "args": vars(args), "models": {}}
    for name, rows in (("neft3", low), ("neft3_reversed3", both)):
        selection = peft_neft.NeuronSelection(rows=rows, metadata={"method": name, "percent": args.percent})
        selection.save(out / f"{name}.safetensors")
        model = get_peft_model(copy.deepcopy(base), peft_neft.NeFTConfig.from_selection(selection))
        losses = train(model, examples, args.steps, args.lr, args.batch_size, pad_id, seed=1)
        merged = model.merge_and_unload()
        merged.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
        trainable = sum(int(r.numel()) * in_features[n] for n, r in rows.items())
        summary["models"][name] = {"neurons": selection.num_neurons, "trainable_params": trainable,
                                   "trainable_percent": 100 * trainable / total, "losses": losses}
        del model, merged
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in summary["models"].items()}))


if __name__ == "__main__":
    main()
