"""How far ``merge_and_unload()`` outputs are from the unmerged adapter's, per dtype.

    python benchmarks/merge_accuracy.py

Tiny randomly initialised Llamas (2 layers, hidden 32 and 64), four modules adapted with random deltas
N(0, 0.05^2), five seeds, a batch of 4 x 16 random tokens. Prints the largest absolute logit difference
between the merged plain model and the unmerged NeFT model, and that difference relative to the largest
absolute logit. The numbers in docs/layer.md come from this script.
"""

from __future__ import annotations

import platform

import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_neft import NeFTConfig

SEEDS = range(5)


def tiny_llama(seed: int, hidden: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def worst_difference(hidden: int, dtype: torch.dtype) -> tuple[float, float]:
    rows = {"model.layers.0.mlp.up_proj": [1, 2, 3, 9], "model.layers.1.mlp.down_proj": [0, 5],
            "model.layers.0.self_attn.v_proj": [1, 4], "model.layers.1.self_attn.q_proj": list(range(0, hidden, 3))}
    worst = worst_relative = 0.0
    for seed in SEEDS:
        model = get_peft_model(tiny_llama(seed, hidden).to(dtype), NeFTConfig(neurons=rows))
        generator = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "neft_delta" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            ids = torch.randint(0, 128, (4, 16), generator=generator)
            unmerged = model(input_ids=ids).logits.float()
            merged = model.merge_and_unload()(input_ids=ids).logits.float()
        difference = (merged - unmerged).abs().max().item()
        worst = max(worst, difference)
        worst_relative = max(worst_relative, difference / unmerged.abs().max().item())
    return worst, worst_relative


def main() -> None:
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| hidden | dtype | max abs logit difference | relative to max abs logit |")
    print("| --- | --- | --- | --- |")
    for hidden in (32, 64):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            worst, relative = worst_difference(hidden, dtype)
            print(f"| {hidden} | {str(dtype).removeprefix('torch.')} | {worst:.3g} | {relative:.3g} |")


if __name__ == "__main__":
    main()
