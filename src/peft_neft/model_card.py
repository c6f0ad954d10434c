"""Model cards (README.md) for NeFT adapters and their LoRA exports that whoever receives them can follow.

A card names the base model by its Hub id when it has one (never a local path), says how to install and load
what it describes, summarises the selection (modules, rows, parameters, scorer, budget) and the versions used,
and carries none of peft's empty template sections. Text a user wrote in an existing card is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelCardData

from ._version import __version__
from .atomic import atomic_path
from .embedded_model import hub_id

_START, _END = "<!-- peft-neft card -->", "<!-- end of peft-neft card -->"
_ADAPTER_TAG = "base_model:adapter:"
BASE_PLACEHOLDER = "BASE_MODEL"
"""What a card's loading code says where the base model has no Hub id; the receiver puts the base model there."""


def _versions() -> str:
    found = []
    for package in ("peft-neft", "peft", "transformers", "torch"):
        try:
            found.append(f"{package} {__version__ if package == 'peft-neft' else version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def _install_block() -> str:
    return f"""```bash
# peft-neft is not on the Python package index yet: install it (version {__version__}) from a checkout of its
# source repository
pip install /path/to/peft-neft
```"""


def _base_lines(base: Optional[str]) -> str:
    if base:
        return f'base = AutoModelForCausalLM.from_pretrained("{base}")'
    return (f"# {BASE_PLACEHOLDER}: the folder or Hub id of the base model this adapter was trained on\n"
            f'base = AutoModelForCausalLM.from_pretrained("{BASE_PLACEHOLDER}")')


def _rows_summary(counts: Mapping[str, int], shapes: Mapping[str, Any]) -> list[str]:
    ks = sorted(counts.values())
    lines = [f"- modules: {len(ks)}",
             f"- selected rows: {sum(ks)} (output neurons; per module: min {ks[0]}, median {ks[len(ks) // 2]}, max {ks[-1]})"]
    if all(name in shapes for name in counts):
        lines.append(f"- trainable parameters: {sum(k * int(shapes[n][1]) for n, k in counts.items()):,}")
    return lines


def _provenance(provenance: Optional[Mapping[str, Any]]) -> list[str]:
    if not provenance:
        return ["- scorer: not recorded (a hand-made selection, or one passed as a dict of rows)"]
    scorer = str(provenance.get("method", "not recorded"))
    if provenance.get("strategy"):
        scorer += f" ({provenance['strategy']})"
    lines = [f"- scorer: {scorer}"]
    budget = provenance.get("budget")
    if isinstance(budget, Mapping) and "value" in budget:
        lines.append(f"- budget: {budget['value']:g} {budget.get('unit', '')}".rstrip())
    return lines


def neft_card_section(configs: Mapping[str, Any]) -> str:
    """The card's body for the NeFT adapters ``name -> NeFTConfig`` saved in one folder."""
    base = hub_id(next(iter(configs.values())).base_model_name_or_path)
    parts = ["# NeFT adapter", "",
             "This adapter was trained with NeFT (Neuron-Level Fine-Tuning, arXiv 2403.11621): it updates selected "
             "rows (output neurons) of the base model's Linear weights and leaves every other weight frozen. peft "
             "loads it with the `peft-neft` plugin installed and imported; without the import, "
             "`PeftModel.from_pretrained` fails with `KeyError: 'NEFT'`.", "",
             f"- base model: {base or 'a local folder, not named here: load the one this adapter was trained on'}"]
    for name, config in configs.items():
        parts += ["", f"## Selection{'' if len(configs) == 1 else f' of adapter `{name}`'}", ""]
        parts += _rows_summary(config.neuron_counts, config.module_shapes or {})
        parts += _provenance(config.selection_provenance)
        parts.append(f"- delta dtype: {config.delta_dtype or 'float32 (peft autocast_adapter_dtype)'}")
    adapter = "" if list(configs) == ["default"] else ", adapter_name=NAME"
    parts += ["", "## Loading", "", _install_block(), "", "```python",
              "import peft_neft  # registers NeFT with peft; import it before loading",
              "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
              _base_lines(base), f'model = PeftModel.from_pretrained(base, "ADAPTER_DIR"{adapter})', "```", "",
              "Where the plugin cannot be installed, convert the adapter once, on a machine that has it, to a "
              "standard LoRA adapter that plain peft loads:", "", "```bash",
              f"peft-neft export-lora ADAPTER_DIR OUT_DIR --base {base or BASE_PLACEHOLDER}", "```", "",
              "## Versions", "", f"Saved with {_versions()}."]
    return "\n".join(parts)


def lora_card_section(source_name: str, base_model: Optional[str], counts: Mapping[str, int],
                      shapes: Mapping[str, Any], ranks: Mapping[str, int], errors: Mapping[str, float],
                      provenance: Optional[Mapping[str, Any]]) -> str:
    """The card's body for a LoRA adapter exported from NeFT adapter ``source_name``."""
    base = hub_id(base_model)
    exact = not errors
    how = ("Each adapted module's update `delta_W = S @ D` (selected rows `R`, row deltas `D`) is written as a LoRA "
           "of rank k = len(R) with `lora_A = D`, `lora_B` the one-hot matrix `S` and `lora_alpha = k` (scaling 1), "
           "so plain peft computes the NeFT model's outputs without `peft-neft` installed.")
    if not exact:
        how += (f" {len(errors)} module(s) selected more rows than the rank limit and hold their best approximation "
                "of that rank instead (truncated SVD); their relative errors `||delta_W - B @ A||_F / ||delta_W||_F` "
                "are listed below.")
    parts = ["# LoRA adapter exported from NeFT", "",
             f"Exported by `peft-neft export-lora` from the NeFT (neuron-level fine-tuning) adapter `{source_name}`. "
             + how, "", "## Selection", ""]
    parts += _rows_summary(counts, shapes)
    parts += _provenance(provenance)
    parts += [f"- LoRA rank per module: min {min(ranks.values())}, max {max(ranks.values())} (a server's max LoRA "
              "rank must be at least the max)", "",
              "| module | rows | LoRA rank | relative error |", "|---|---|---|---|"]
    parts += [f"| {n} | {counts[n]} | {ranks[n]} | {errors.get(n, 0.0):.3g} |" for n in sorted(ranks)]
    parts += ["", "## Loading", "", "Plain peft loads it; `peft-neft` is not needed.", "", "```bash",
              "pip install peft transformers", "```", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "", _base_lines(base),
              'model = PeftModel.from_pretrained(base, "ADAPTER_DIR")', "```", "",
              "With the base model at the path or Hub id its `adapter_config.json` records, "
              '`peft.AutoPeftModelForCausalLM.from_pretrained("ADAPTER_DIR")` loads both at once.', "",
              "## Versions", "", f"Exported with {_versions()}."]
    return "\n".join(parts)


def _user_text(text: str) -> str:
    """What a user wrote in a card: the text minus our section, peft's empty template and peft's version line."""
    text = re.sub(re.escape(_START) + ".*?" + re.escape(_END), "", text, flags=re.S)
    template = {line.strip() for line in ModelCard.from_template(ModelCardData()).text.splitlines()} - {""}
    keep = [line for line in text.splitlines()
            if line.strip() not in template and line.strip() != "### Framework versions"
            and not re.fullmatch(r"\s*- PEFT [\w.+-]+\s*", line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(keep)).strip()


def write_model_card(directory: str | os.PathLike, section: str, base_model: Optional[str],
                     tags: tuple[str, ...] = ("neft", "peft-neft"), pipeline_tag: Optional[str] = None) -> None:
    """Create or update ``directory/README.md`` with ``section``, atomically.

    The metadata names the base model by its Hub id, or not at all; a ``base_model:adapter:`` tag built from a
    local path is dropped. Text a user added to an existing card is kept after the section.
    """
    path = Path(directory) / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\nlibrary_name: peft\n---\n")
    base = hub_id(base_model)
    card.data.library_name = "peft"
    if base:
        card.data.base_model = base
    elif card.data.base_model is not None:
        card.data.base_model = None
    kept = {t for t in (card.data.tags or []) if not t.startswith(_ADAPTER_TAG)}
    card.data.tags = sorted(kept | set(tags) | ({f"{_ADAPTER_TAG}{base}"} if base else set()))
    if pipeline_tag:
        card.data.pipeline_tag = pipeline_tag
    user = _user_text(card.text)
    card.text = f"\n{_START}\n{section}\n{_END}\n" + (f"\n{user}\n" if user else "")
    with atomic_path(path) as tmp:
        card.save(tmp)
