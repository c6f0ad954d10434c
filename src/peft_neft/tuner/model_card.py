"""The model card (README.md) saved beside a NeFT adapter: what it is and how to load it.

peft writes a generic card when a ``PeftModel`` is saved; it cannot say that loading a NeFT adapter
needs this plugin. :meth:`NeFTConfig.save_pretrained` (called by peft's and transformers' adapter saving
alike) adds that here: the ``neft`` tag, ``library_name: peft`` and a loading section.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..atomic import atomic_path

TAG = "neft"
HEADING = "## Loading this NeFT adapter"


def loading_section(base_model: str | None) -> str:
    """The card section that tells the receiver how to load the adapter, with or without the plugin."""
    base = base_model or "BASE_MODEL"
    return f"""{HEADING}

This adapter was trained with NeFT (Neuron-Level Fine-Tuning, arXiv 2403.11621): it updates selected rows
(neurons) of the base model's Linear weights. peft loads it only with the `peft-neft` plugin installed and
imported; without the import, `PeftModel.from_pretrained` fails with `KeyError: 'NEFT'`.

```bash
pip install peft-neft
```

```python
import peft_neft  # registers NeFT with peft; import it before loading
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "ADAPTER_DIR")
```

Where the plugin cannot be installed, convert the adapter once, on a machine that has it, to a standard
LoRA adapter that plain peft loads:

```bash
peft-neft export-lora ADAPTER_DIR OUT_DIR
```
"""


def write_model_card(directory: str | os.PathLike, base_model: str | None = None) -> None:
    """Create or update ``directory/README.md`` so it names the plugin and how to load the adapter.

    Keeps what the card already holds (peft's metadata and text); adds the section once.
    """
    path = Path(directory) / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData())
    card.data.library_name = "peft"
    card.data.tags = sorted(set(card.data.tags or []) | {TAG})
    if base_model and not card.data.base_model:
        card.data.base_model = base_model
    if HEADING not in card.text.splitlines():
        card.text = loading_section(base_model or card.data.base_model) + "\n" + card.text
    with atomic_path(path) as tmp:
        card.save(tmp)
