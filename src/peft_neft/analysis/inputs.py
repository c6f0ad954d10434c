"""Analysis inputs: reading texts from a file and turning texts or token ids into padded batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import torch
from transformers import PreTrainedTokenizerBase

from ..tasks import read_data_file

Inputs = Union[Sequence[str], Sequence[Sequence[int]]]


def load_texts(path: Union[str, os.PathLike], text_field: str = "text", limit: Optional[int] = None) -> list[str]:
    """Texts to run the models on: JSON lines (``.jsonl``/``.json``, field ``text_field``) or one text per line.

    Gzipped files (``.gz``) are read the same way. ``limit`` keeps the first ``limit`` texts.
    """
    data = read_data_file(path)  # a text file has the one field "text"
    if text_field not in data.column_names:
        raise ValueError(
            f"{os.fspath(path)!r} has no field {text_field!r}; its fields are {data.column_names}. "
            "Pass the field holding the input text (--text-field)."
        )
    texts = [t for t in data[text_field] if isinstance(t, str) and t.strip()]
    if limit is not None:
        texts = texts[:limit]
    if not texts:
        raise ValueError(f"{os.fspath(path)!r} holds no non-empty texts; the analysis needs at least one input.")
    return texts


def tokenize(inputs: Inputs, tokenizer: Optional[PreTrainedTokenizerBase], max_length: int) -> list[list[int]]:
    """Token ids per input: texts go through ``tokenizer``; lists of ints are taken as token ids."""
    if len(inputs) == 0:
        raise ValueError("The dataset is empty: pass at least one text (or one list of token ids).")
    if all(isinstance(item, str) for item in inputs):
        if tokenizer is None:
            raise ValueError("Texts need a tokenizer: pass tokenizer=..., or pass token-id lists instead of texts.")
        ids = tokenizer(list(inputs), truncation=True, max_length=max_length)["input_ids"]
    elif all(not isinstance(item, str) and all(isinstance(t, int) for t in item) for item in inputs):
        ids = [list(item)[:max_length] for item in inputs]
    else:
        raise TypeError("Inputs must be all texts (str) or all token-id lists (lists of int), not a mix.")
    if any(len(seq) == 0 for seq in ids):
        raise ValueError("An input has no tokens; remove empty inputs from the dataset.")
    return ids


def batches(ids: list[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` batches; padding is masked out downstream."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        width = max(len(seq) for seq in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, seq in enumerate(chunk):
            input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        yield input_ids, mask
