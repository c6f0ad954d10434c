"""Task data (translation, summarization), prompts with loss on target tokens only, and metrics."""

from .data import (TASKS, Task, django_translation_pairs, hold_out_validation, load_pairs, load_prompt_completion,
                   read_data_file)
from .metrics import score
from .prompts import encode_for_generation, encode_for_training

__all__ = [
    "TASKS",
    "Task",
    "django_translation_pairs",
    "hold_out_validation",
    "encode_for_generation",
    "encode_for_training",
    "load_pairs",
    "load_prompt_completion",
    "read_data_file",
    "score",
]
