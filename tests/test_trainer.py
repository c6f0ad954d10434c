"""transformers.Trainer trains a NeFT model like any peft model."""

import copy

import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from peft_neft import NeFTConfig

from conftest import make_tiny_llama


def test_trainer_reduces_the_loss_and_touches_only_the_deltas(tmp_path):
    base = make_tiny_llama()
    selection = {f"model.layers.{i}.mlp.{m}": list(range(0, 64, 2)) for i in range(2) for m in ("up_proj", "gate_proj")}
    selection.update({f"model.layers.{i}.mlp.down_proj": list(range(0, 32, 2)) for i in range(2)})
    original = copy.deepcopy(base)
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
    deltas = {n[len("base_model.model."):-len(".neft_delta.default")]: p for n, p in model.named_parameters()
              if "neft_delta" in n}
    assert deltas.keys() == selection.keys() and all(bool((d.abs().sum(1) > 0).all()) for d in deltas.values())

    # The gradient Trainer's model gets is the paper's masked update: that of the selected rows of the dense
    # weight W[R] + D (deltas trained, so the delta's part of every input gradient counts too).
    dense = copy.deepcopy(original)
    dense_modules = dict(dense.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            dense_modules[name].weight[selection[name]] += delta
    batch = next(iter(trainer.get_train_dataloader()))
    model.zero_grad()
    model(**batch).loss.backward()
    dense(**batch).loss.backward()
    for name, delta in deltas.items():
        expected = dense_modules[name].weight.grad[selection[name]]
        assert expected.abs().sum() > 0
        torch.testing.assert_close(delta.grad, expected, rtol=1e-4, atol=1e-6)
