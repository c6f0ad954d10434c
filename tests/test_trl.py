"""TRL: ``trl.SFTTrainer`` takes a NeFT ``peft_config`` and trains only the NeFT deltas."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from peft_neft import NeFTConfig

from conftest import make_tiny_llama

trl = pytest.importorskip("trl")

VOCAB = 128
SELECTION = {f"model.layers.{i}.mlp.{m}": list(range(0, 64, 2)) for i in range(2) for m in ("up_proj", "gate_proj")}


def _word_tokenizer():
    """A real fast tokenizer over the words n0..n124 (ids 3..127), built in memory: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"n{i}": i + 3 for i in range(VOCAB - 3)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _counting_dataset(n: int = 32):
    """A learnable task: every text counts upwards from a random start."""
    from datasets import Dataset

    starts = torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_list([{"text": " ".join(f"n{s + k}" for k in range(12))} for s in starts])


def test_sft_trainer_trains_a_neft_peft_config(tmp_path):
    base = make_tiny_llama(vocab=VOCAB)
    frozen_before = {n: p.detach().clone() for n, p in base.named_parameters()}
    dense_model = make_tiny_llama(vocab=VOCAB)
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=15,
        per_device_train_batch_size=8,
        learning_rate=1e-1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        max_length=16,
        gradient_checkpointing=True,  # TRL's default, spelled out
        bf16=True,  # TRL's default too: autocast to bfloat16, also on CPU
    )
    trainer = trl.SFTTrainer(model=base, args=args, train_dataset=_counting_dataset(),
                             processing_class=_word_tokenizer(), peft_config=NeFTConfig(neurons=SELECTION))
    model = trainer.model
    assert isinstance(model, PeftModel) and isinstance(model.peft_config["default"], NeFTConfig)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"base_model.model.{name}.neft_delta.default" for name in SELECTION}
    trainer.train()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert model.base_model.model.is_gradient_checkpointing

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 15
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2  # untrained it stays near ln(128)
    for name, param in model.base_model.model.named_parameters():
        if "neft_delta" not in name:
            original = name.replace(".base_layer.", ".")
            assert torch.equal(param, frozen_before[original]), name

    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(make_tiny_llama(vocab=VOCAB), tmp_path / "adapter")
    trained = dict(model.named_parameters())
    for name, param in reloaded.named_parameters():
        if "neft_delta" in name:
            assert torch.equal(param, trained[name]), name
            assert param.abs().sum() > 0

    # Under TRL's bf16 autocast and gradient checkpointing (NeFT's unfused path), each delta's gradient is that
    # of the selected rows of the dense weight W[R] + D, up to bfloat16 rounding.
    deltas = {name: trained[f"base_model.model.{name}.neft_delta.default"] for name in SELECTION}
    dense_modules = dict(dense_model.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            dense_modules[name].weight[SELECTION[name]] += delta
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels") if k in batch}
    model.zero_grad()
    dense_model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**inputs).loss.backward()
        dense_model(**inputs).loss.backward()
    for name, delta in deltas.items():
        expected = dense_modules[name].weight.grad[SELECTION[name]]
        assert expected.abs().sum() > 0
        assert float((delta.grad - expected).norm() / expected.norm()) < 0.1, name
