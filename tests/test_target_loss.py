"""The target-only loss equals the standard full-logits loss, in value and gradients (fp32, tight)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from peft_neft import NeFTConfig
from peft_neft.training import causal_lm_target_loss

from conftest import make_tiny_llama

NEFT_ROWS = {"model.layers.0.mlp.up_proj": [3, 17, 40], "model.layers.1.mlp.down_proj": [0, 31],
             "lm_head": [2, 5, 77]}


def _batch():
    """Right-padded rows with the loss on a suffix only, as encode_for_training makes them."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    labels[0, 6] = -100  # a hole inside a target
    labels[0, 8], labels[2, 3] = 5, 77  # labels on rows the lm_head selection trains
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _model(kind):
    model = make_tiny_llama()
    if kind == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    elif kind == "neft":
        model = get_peft_model(model, NeFTConfig(neurons=NEFT_ROWS))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "neft_delta" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return model.train()


def _loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["plain", "lora", "neft"])
def test_loss_and_gradients_equal_the_full_logits_loss(kind):
    model = _model(kind)
    batch = _batch()
    full, full_grads = _loss_and_grads(model, lambda m: m(**batch).loss)
    ours, our_grads = _loss_and_grads(model, lambda m: causal_lm_target_loss(m, **batch))
    torch.testing.assert_close(ours, full, rtol=1e-6, atol=1e-6)
    assert full_grads.keys() == our_grads.keys() and full_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    if kind == "neft":
        assert our_grads["base_model.model.lm_head.neft_delta.default"].abs().sum() > 0


def test_num_items_in_batch_divides_the_sum():
    model = _model("plain")
    batch = _batch()
    count = int((batch["labels"][:, 1:] != -100).sum())
    mean = causal_lm_target_loss(model, **batch)
    summed = causal_lm_target_loss(model, **batch, num_items_in_batch=torch.tensor(2 * count))
    torch.testing.assert_close(summed, mean / 2)


def test_generation_is_unchanged_by_computing_the_loss():
    model = _model("neft").eval()
    ids = _batch()["input_ids"][:1, :4]
    before = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    causal_lm_target_loss(model, **_batch())
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=5, do_sample=False), before)
