"""NeFT end to end in a plain ``transformers.Trainer``, from a ``datasets`` dataset to a LoRA folder.

1. A ``datasets.Dataset`` of (source, target) pairs, encoded with the loss on the target only.
2. Calibration: a short fine-tune in a ``Trainer`` with ``NeuronCalibrationCallback``, which scores every row of
   ``up_proj``/``down_proj`` at step K, selects a budget of them and writes ``selection.safetensors``.
3. NeFT training of the selected rows on a fresh copy of the base model, in a second ``Trainer``.
4. Save (adapter, card and tokenizer), load it back in plain peft, merge it into the base model.
5. Export it as a standard peft LoRA adapter, which any peft install loads without peft-neft.

Each stage checks that the next one computes the same logits. Run it on the embedded SmolLM2-135M-Instruct, or
on any causal LM folder (on a 2-core Intel Xeon with avx512_bf16, no GPU, shared with a background training, the
first line took 5 min 37 s and at most 3.6 GB of memory; ``tests/test_examples.py`` runs it on a tiny model)::

    python examples/finetune_with_callback.py --out neft-example
    python examples/finetune_with_callback.py --model path/to/model --calibration-steps 800 --steps 2000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

import peft_neft
from peft_neft import Budget, NeFTConfig, NeuronCalibrationCallback, NeuronSelection
from peft_neft.embedded_model import load_tokenizer, resolve_model_path
from peft_neft.tasks import TASKS, encode_for_training, make_collator

PAIRS = [
    ("Good morning.", "Bonjour."), ("Thank you very much.", "Merci beaucoup."), ("Where is the station?", "Où est la gare ?"),
    ("I am tired.", "Je suis fatigué."), ("The cat sleeps.", "Le chat dort."), ("It is raining.", "Il pleut."),
    ("See you tomorrow.", "À demain."), ("I like apples.", "J'aime les pommes."), ("Open the door.", "Ouvre la porte."),
    ("The book is red.", "Le livre est rouge."), ("We are friends.", "Nous sommes amis."), ("Good night.", "Bonne nuit."),
    ("The sea is blue.", "La mer est bleue."), ("I read a letter.", "Je lis une lettre."),
    ("She sings well.", "Elle chante bien."), ("The water is cold.", "L'eau est froide."),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default",
                        help="a causal LM folder or Hub id; 'default': the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--out", default="neft-example", help="folder for the selection, adapter and LoRA export")
    parser.add_argument("--calibration-steps", type=int, default=4, help="fine-tuning steps K before scoring")
    parser.add_argument("--steps", type=int, default=8, help="NeFT training steps")
    parser.add_argument("--percent", type=float, default=1.0, help="budget: this percent of all model parameters")
    return parser.parse_args(argv)


def training_arguments(out: Path, steps: int, lr: float) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=lr,
                             save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True, seed=0)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().cpu()(input_ids=ids).logits


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out, path = Path(args.out), resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)

    # 1. A datasets.Dataset, encoded as peft-neft's commands encode it (the task's instruction in the chat template).
    instruction = TASKS["translation"].instruction_for("en", "fr")
    pairs = Dataset.from_dict({"source": [s for s, _ in PAIRS], "target": [t for _, t in PAIRS]})
    data = pairs.map(lambda row: encode_for_training(tokenizer, instruction, row["source"], row["target"]),
                     remove_columns=pairs.column_names)
    collator = make_collator(tokenizer)

    # 2. Calibration: the callback scores the rows at step K, selects 1% of all parameters and stops the run.
    # Training only the scored modules needs less memory; drop the freezing to fine-tune everything, as the paper does.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.endswith(("up_proj.weight", "down_proj.weight"))
    selection_file = out / "selection.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    callback = NeuronCalibrationCallback(args.calibration_steps, selection_file, budget=Budget(percent=args.percent),
                                         stop_training=True)
    Trainer(model=model, args=training_arguments(out / "calibration", args.calibration_steps, 1e-5),
            train_dataset=data, data_collator=collator, callbacks=[callback]).train()
    print(callback.selection.summary())
    del model  # the calibration changed its weights; NeFT trains a fresh copy

    # 3. NeFT: only the selected rows train.
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           NeFTConfig.from_selection(NeuronSelection.load(selection_file)))
    model.print_trainable_parameters()
    Trainer(model=model, args=training_arguments(out / "training", args.steps, 1e-3), train_dataset=data,
            data_collator=collator).train()

    # 4. Save (with its card, and the tokenizer beside it), load in a plain peft way, merge.
    adapter = out / "adapter"
    peft_neft.save_pretrained_atomically(model, adapter)
    tokenizer.save_pretrained(adapter)
    ids = torch.tensor([data[0]["input_ids"]])
    trained = logits(model, ids)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), adapter)
    torch.testing.assert_close(logits(loaded, ids), trained)
    merged = loaded.merge_and_unload()  # a plain transformers model, without peft
    torch.testing.assert_close(logits(merged, ids), trained, rtol=1e-4, atol=1e-4)

    # 5. Export as a LoRA adapter (same outputs) that plain peft loads with no peft-neft installed.
    lora = peft_neft.export_lora(adapter, out / "lora", base=path, overwrite=True)
    as_lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), lora)
    torch.testing.assert_close(logits(as_lora, ids), trained, rtol=1e-4, atol=1e-4)
    print(f"NeFT adapter: {adapter}; merged and LoRA export give the trained logits; LoRA adapter: {lora}")


if __name__ == "__main__":
    main()
