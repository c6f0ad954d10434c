"""Tasks (their data fields, instruction, metrics and paired test), task data, and prompts with loss on target tokens.

The names load on first use, so ``peft_neft.tasks.task`` (the registry the command line reads) stays
cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .data import django_translation_pairs, hold_out_validation, load_pairs, read_data_file
    from .prompts import (IGNORE_INDEX, encode_for_generation, encode_pairs, encode_for_training, make_collator,
                          prompt_text)
    from .task import TASKS, Task, get_task

_HOME = {
    **dict.fromkeys(["TASKS", "Task", "get_task"], "task"),
    **dict.fromkeys(["django_translation_pairs", "hold_out_validation", "load_pairs", "read_data_file"], "data"),
    **dict.fromkeys(["IGNORE_INDEX", "encode_for_generation", "encode_pairs", "encode_for_training", "make_collator",
                     "prompt_text"], "prompts"),
}
__all__ = sorted(_HOME)


__getattr__, __dir__ = lazy_exports(__name__, _HOME, globals())
