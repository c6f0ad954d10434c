"""transformers.Trainer trains a NeFT model like any peft model."""

import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from peft_neft import NeFTConfig

from conftest import make_tiny_llama


def test_trainer_reduces_the_loss_and_touches_only_the_deltas(tmp_path):
    base = make_tiny_llama()
    selection = {f"model.layers.{i}.mlp.{m}": list(range(0, 64, 2)) for i in range(2) for m in ("up_proj", "gate_proj")}
    selection.update({f"model.layers.{i}.mlp.down_proj": list(range(0, 32, 2)) for i in range(2)})
    model = get_peft_model(base, NeFTConfig(neurons=selection))
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    # A learnable task: every sequence counts upwards from a random start.
    generator = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 100, (16,), generator=generator)
    data = [{"input_ids": (s + torch.arange(12)).tolist(), "labels": (s + torch.arange(12)).tolist()} for s in starts]

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=20,
        per_device_train_batch_size=8,
        learning_rate=1e-1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2  # no update would leave it near ln(128)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen_before[name]), name
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "neft_delta" in n)
