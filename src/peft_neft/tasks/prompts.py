"""Prompts for an instruction-tuned causal LM, tokenized with the loss on the target tokens only, and their collator.

The one place that encodes prompts: calibration (``peft-neft calibrate``), training and evaluation
(``peft-neft compare``) all encode here, so neurons are scored on exactly the inputs they are trained on.

With a chat template (SmolLM2-Instruct has one) the instruction is the system message and the input
the user message (which also replaces SmolLM2's long default system prompt: shorter sequences, faster
CPU runs); without one, a plain ``"instruction\\n\\ninput\\n\\nAnswer: "`` format. The target follows, ended by the
EOS token; prompt positions get label ``-100`` so only the target (and its EOS) is learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label of positions without a target (PyTorch's cross-entropy default)


def _truncate(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int | None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if max_tokens is None else ids[:max_tokens]


def prompt_text(tokenizer: PreTrainedTokenizerBase, instruction: str, source: str) -> str:
    """The prompt the model continues, as text: the chat template's, or the plain format without one."""
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": source}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{instruction}\n\n{source}\n\nAnswer: "


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, instruction: str, source_ids: list[int]) -> list[int]:
    text = prompt_text(tokenizer, instruction, tokenizer.decode(source_ids))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_for_generation(
    tokenizer: PreTrainedTokenizerBase, instruction: str, source: str, max_source_tokens: int | None = None
) -> list[int]:
    """Token ids of the prompt the model continues at test time."""
    return _prompt_ids(tokenizer, instruction, _truncate(tokenizer, source, max_source_tokens))


def encode_for_training(
    tokenizer: PreTrainedTokenizerBase,
    instruction: str,
    source: str,
    target: str,
    max_source_tokens: int | None = None,
    max_target_tokens: int | None = None,
) -> dict[str, Any]:
    """``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on the prompt) for one example."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token; the model could not learn where a target ends.")
    prompt = encode_for_generation(tokenizer, instruction, source, max_source_tokens)
    answer = _truncate(tokenizer, target, max_target_tokens) + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt + answer,
        "attention_mask": [1] * (len(prompt) + len(answer)),
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
    }


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    instruction: str,
    sources: Sequence[str],
    targets: Sequence[str],
    max_source_tokens: int | None = None,
    max_target_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """:func:`encode_for_training` of every (source, target) pair."""
    return [encode_for_training(tokenizer, instruction, s, t, max_source_tokens, max_target_tokens)
            for s, t in zip(sources, targets)]


def make_collator(tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None) -> DataCollatorForSeq2Seq:
    """Pads ``input_ids`` (pad token; EOS where there is none), ``attention_mask`` (0) and ``labels`` (-100) to the
    longest row, rounded up to ``pad_to_multiple_of`` if given (see :attr:`Precision.pad_to_multiple_of`)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt",
                                  pad_to_multiple_of=pad_to_multiple_of)
