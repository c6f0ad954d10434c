"""Analysis inputs: reading texts from a file and turning texts or token ids into padded batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import PreTrainedTokenizerBase

Inputs = Union[Sequence[str], Sequence[Sequence[int]]]


def load_texts(path: Union[str, os.PathLike], text_field: str = "text", limit: Optional[int] = None) -> list[str]:
    """Texts to run the models on: JSON lines (``.jsonl``/``.json``, field ``text_field``) or one text per line.

    Gzipped files (``.gz``) are read the same way. ``limit`` keeps the first ``limit`` texts.
    """
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"Analysis data file {os.fspath(path)!r} does not exist.")
    if source.stat().st_size == 0:
        raise ValueError(f"{os.fspath(path)!r} is empty (no non-empty texts); the analysis needs at least one input.")
    suffixes = [s for s in source.suffixes if s != ".gz"]
    is_json = bool(suffixes) and suffixes[-1] in (".jsonl", ".json")
    try:
        data = load_dataset("json" if is_json else "text", data_files=os.fspath(source), split="train")
    except (DatasetGenerationError, StopIteration) as err:
        kind = "JSON lines" if is_json else "text lines"
        raise ValueError(f"{os.fspath(path)!r} could not be read as {kind}: {err!r}") from err
    field = text_field if is_json else "text"
    if len(data) and field not in data.column_names:
        raise ValueError(
            f"{os.fspath(path)!r} has no field {field!r}; its fields are {data.column_names}. "
            "Pass the field holding the input text (--text-field)."
        )
    texts = [t for t in (data[field] if len(data) else []) if isinstance(t, str) and t.strip()]
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
