"""Saving a NeFT model's adapters: atomically, with a model card whoever receives them can follow."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from ..atomic import leftovers, recover_folder, remove, umask
from ..embedded_model import portable_name
from ..tuner.integrity import add_checksums
from .model_card import TrainingRun, write_adapter_card

_SAVE_PREFIX = ".neft-save."  # the temporary folder of a save, inside the target


def on_config_save(folder: str | os.PathLike, config) -> None:
    """Before a NeFT config is written (peft's ``model.save_pretrained`` included): name its base model portably
    (the Hub id of the embedded SmolLM2 rather than its cache folder) and write its model card into ``folder``."""
    if config.base_model_name_or_path:
        config.base_model_name_or_path = portable_name(config.base_model_name_or_path)
    write_adapter_card(folder, {"default": config})


def write_card(directory: str | os.PathLike, model, run: Optional[TrainingRun] = None) -> None:
    """Write the model card of ``model``'s adapters (NeFT, or one LoRA) into ``directory/README.md``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel, or transformers'
    write_adapter_card(directory, model.peft_config, run, causal_lm=type(base).__name__.endswith("ForCausalLM"))


def save_pretrained_atomically(model, save_directory: str | os.PathLike, *, tokenizer=None,
                               run: Optional[TrainingRun] = None, **kwargs) -> None:
    """``model.save_pretrained(save_directory, **kwargs)`` with a model card, and no file ever half-written.

    The card (:mod:`peft_neft.model_card`) describes NeFT adapters or a LoRA adapter, and the training ``run``
    where given; ``tokenizer`` is saved beside the adapter where given, as TRL's ``save_model`` does.

    Each weights file carries a sha256 of every tensor in its metadata (:mod:`peft_neft.tuner.integrity`), which
    loading checks.

    The save goes to a hidden temporary folder inside ``save_directory`` (so it is on the same file system
    even when the folder is a mount point or a symlink); then each file it wrote replaces its counterpart
    with one atomic rename, weights before ``adapter_config.json``. Every other file in the folder (a
    tokenizer, training arguments, other adapters' subfolders) is kept, as with plain ``save_pretrained``,
    and text a user wrote in an existing ``README.md`` is kept in the new card.

    At every instant each file is either its complete old or complete new version. A crash between an
    adapter's two renames leaves its new weights beside its old config: exactly the new adapter when the
    selection's modules and row counts are unchanged (the config stores only those); see docs/layer.md for
    the other case. Saving again repairs it. Temporaries left by a killed save are removed by the next save.
    """
    target = Path(save_directory)
    if not kwargs.get("is_main_process", True):  # peft writes nothing on other ranks; neither do we
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)  # whole-folder swaps of earlier saves may have left a folder hidden beside it
    target.mkdir(exist_ok=True)
    for leftover in leftovers(target, _SAVE_PREFIX, ".tmp"):
        remove(leftover)
    for config in model.peft_config.values():  # the Hub id of the embedded model, not its cache folder
        if config.base_model_name_or_path:
            config.base_model_name_or_path = portable_name(config.base_model_name_or_path)
    tmp = Path(tempfile.mkdtemp(prefix=_SAVE_PREFIX, suffix=".tmp", dir=target))
    try:
        if (target / "README.md").is_file():
            shutil.copy2(target / "README.md", tmp / "README.md")  # the card keeps what a user wrote in it
        model.save_pretrained(tmp, **kwargs)
        for weights in tmp.rglob(SAFETENSORS_WEIGHTS_NAME):  # a sha256 per tensor, checked on load
            add_checksums(weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_card(tmp, model, run)
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())  # weights first, configs last
        mode = 0o666 & ~umask()
        for relative in sorted(written, key=lambda p: (p.name == CONFIG_NAME, p.name == "README.md")):
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp / relative, mode)
            os.replace(tmp / relative, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
