"""The causal-LM loss computed on the labelled positions only.

A causal LM's standard loss builds logits over the whole vocabulary for every position, although
only target positions carry a label; with an instruction prompt, most positions are prompt. Here the
decoder runs as usual, the hidden states of the positions whose *next* token has a label are
gathered (the same shift as ``transformers``' ``ForCausalLMLoss``), and the LM head runs on those
alone. Loss and gradients equal the standard loss; generation is untouched.
"""

from __future__ import annotations

from typing import Optional

import torch
from peft import PeftModel
from torch import nn
from torch.nn import functional as F

from ..tasks.prompts import IGNORE_INDEX


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (peft's layers stay injected in it), or the model itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def causal_lm_target_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    num_items_in_batch: Optional[int | torch.Tensor] = None,
) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens, with the LM head applied only where a label follows.

    Works for a transformers causal LM and for a peft model around one (LoRA, NeFT; a NeFT selection
    may include ``lm_head`` rows, since the head is called as the module it is). ``labels`` are the
    usual unshifted labels with ``-100`` where there is no target. ``num_items_in_batch`` (as
    ``Trainer`` passes it under gradient accumulation) divides the summed loss instead of the count.
    """
    lm = _causal_lm(model)
    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(lm).__name__} has no output embeddings (LM head); it is not a causal LM.")
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is not None:
        count = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        return total / count
    return total / keep.sum().clamp(min=1)
