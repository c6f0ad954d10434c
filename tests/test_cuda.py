"""The NeFT layer on a CUDA device (skipped where there is none)."""

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_neft import NeFTConfig

from conftest import make_tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROWS = {"model.layers.0.mlp.up_proj": [1, 9, 33], "model.layers.1.mlp.down_proj": [4, 7], "model.layers.0.self_attn.q_proj": [2]}


def _ids(device):
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3)).to(device)


def test_adapter_follows_the_model_to_cuda_and_trains_in_bf16():
    model = get_peft_model(make_tiny_llama().to(torch.bfloat16), NeFTConfig(neurons=ROWS)).to("cuda")
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert layer.neft_delta["default"].device.type == "cuda" and layer.neft_rows["default"].device.type == "cuda"
    assert layer.neft_delta["default"].dtype == torch.float32
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=_ids("cuda"), labels=_ids("cuda")).loss.backward()
        optimizer.step()
    assert layer.base_layer.weight.grad is None
    assert layer.neft_delta["default"].abs().sum() > 0


def test_merge_unmerge_is_bit_exact_on_cuda_and_adapter_loads_on_cpu(tmp_path):
    model = get_peft_model(make_tiny_llama().to(torch.bfloat16), NeFTConfig(neurons=ROWS, init_weights=False, init_seed=0)).to("cuda")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "neft_" not in n}
    unmerged = model(input_ids=_ids("cuda")).logits
    model.merge_adapter()
    torch.testing.assert_close(model(input_ids=_ids("cuda")).logits, unmerged, rtol=0.05, atol=0.05)
    model.unmerge_adapter()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "neft_" not in n)

    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny_llama().to(torch.bfloat16), tmp_path)
    for name, param in model.named_parameters():
        if "neft_delta" in name:
            assert torch.equal(dict(loaded.named_parameters())[name].cpu(), param.detach().cpu())
