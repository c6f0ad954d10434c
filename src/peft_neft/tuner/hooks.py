"""What runs when a NeFT adapter is saved, beyond peft's own save (a module without imports, so the package face
can add to it while peft, imported by the tuner, is still loading)."""

from __future__ import annotations

from typing import Any, Callable

SAVE_HOOKS: list[Callable[[str, Any], None]] = []
"""Each is called as ``hook(folder, config)`` just before a NeFT config is written to ``folder``, which peft's
``model.save_pretrained`` does after its own model card. ``import peft_neft`` adds the one that names the base
model by its Hub id where it has one and writes the NeFT model card (the tuner itself imports no card writer)."""
