"""The settings of a comparison as plain data, importable without torch: the command line builds its flags from them.

Each field's ``metadata`` holds its ``help`` text and, where the command line needs them, ``choices``,
``aliases`` (other flag names, e.g. Trainer's), ``metavar``, ``none_as`` (the spelling of ``None``) and a number's
bounds ``at_least``, ``above``, ``below`` (checked where the flag, or a config file's key, is parsed).
:class:`peft_neft.compare.CompareConfig` is this class with its checks (it needs torch); the defaults live here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._targets import DEFAULT_TARGET_MODULES

SAVE_ADAPTERS = ("best", "all", "none")


def _setting(default: Any, text: str, **cli: Any) -> Any:
    """A field with a default (copied per instance when mutable) and its command-line metadata."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text, **cli})
    return field(default=default, metadata={"help": text, **cli})


@dataclass
class CompareSettings:
    """Everything that makes two comparisons comparable, with the help text of its flag."""

    task: str = _setting("translation", "translation: BLEU and chrF; summarization: ROUGE-1/2/L and chrF",
                         choices=("translation", "summarization"))
    source_lang: str = _setting("en", "source language code, used in the prompt")
    target_lang: str = _setting("fr", "target language code, used in the prompt")
    max_steps: int = _setting(100, "optimizer steps per run at most", aliases=("--steps",), at_least=1)
    epochs: float | None = _setting(None, "passes over the training data at most; a run ends at whichever limit "
                                          "comes first", aliases=("--num-train-epochs",), above=0)
    patience: int | None = _setting(3, "stop a run after N evaluations without a lower validation loss (0: never)",
                                    none_as="0", aliases=("--early-stopping-patience",), at_least=1)
    batch_size: int = _setting(8, "examples per micro-batch", aliases=("--per-device-train-batch-size",), at_least=1)
    gradient_accumulation_steps: int = _setting(1, "micro-batches per optimizer step", at_least=1)
    eval_every: int = _setting(25, "validation loss every N steps, the best is kept", aliases=("--eval-steps",),
                                at_least=1)
    warmup_ratio: float = _setting(0.1, "linear warm-up over this share of the steps, then linear decay",
                                   at_least=0, below=1)
    learning_rates: dict[str, float] = _setting(
        {}, "learning rates of method kinds (repeatable); kinds not given use peft_neft.compare.DEFAULT_LR",
        aliases=("--lr",), metavar="KIND=LR", above=0)
    lr_grid: tuple[float, ...] = _setting((1.0,), "factors tried around each method's lr, the best on validation "
                                                  "loss wins, e.g. 0.33,1,3", above=0)
    calibration_steps: int = _setting(50, "full fine-tuning steps that score neurons", at_least=1)
    stored_calibrations: dict[str, str] = _setting(
        {}, "calibrations computed elsewhere, for NeFT variants that name one (neft[calibration=NAME]:...): a file "
            "a comparison cached (OUT/calibrations/*.safetensors), repeatable", aliases=("--stored-calibration",),
        metavar="NAME=FILE")
    calibration_lr: float | None = _setting(None, "learning rate of the calibration fine-tune (default: full's lr)",
                                          above=0)
    neft_target_modules: tuple[str, ...] = _setting(DEFAULT_TARGET_MODULES, "Linear layers whose rows NeFT scores "
                                                                             "and trains")
    lora_target_modules: tuple[str, ...] = _setting((), "Linear layers LoRA adapts (peft's target_modules rule); "
                                                        "none given: every Linear in the decoder blocks (peft's "
                                                        "all-linear). NeFT's match-lora budget counts the same ones")
    weight_decay: float = _setting(0.0, "AdamW weight decay of every method's training (not of the calibration)",
                                  at_least=0)
    max_source_tokens: int = _setting(256, "truncate inputs to this many tokens", at_least=1)
    max_target_tokens: int = _setting(128, "truncate training targets to this many tokens", at_least=1)
    max_new_tokens: int = _setting(64, "greedy generation length limit, all methods", at_least=1)
    eval_batch_size: int = _setting(16, "sequences per batch for validation loss and greedy decoding",
                                    aliases=("--per-device-eval-batch-size",), at_least=1)
    char_level: bool = _setting(False, "ROUGE on characters (Chinese and other unsegmented targets)")
    device: str = _setting("auto", "auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    dtype: str = _setting("auto", "frozen weights and autocast dtype; auto: bfloat16 where the hardware has native "
                                  "bf16 matrix math (CUDA, AVX512-BF16/AMX CPUs), float32 elsewhere",
                          choices=("auto", "float32", "bfloat16"))
    report_to: str = _setting("none", "where Trainer logs training (OUT/runs/<training>/): none, tensorboard, wandb, all")
    workers: int = _setting(1, "trainings side by side in separate processes, torch's threads shared out among them "
                               "(at equal threads per training, results do not depend on it)", at_least=1)
    checkpoint_dir: str | None = _setting(None, "where trainings checkpoint at each evaluation, to resume after an "
                                                "interruption (default: OUT/checkpoints)")
    save_adapters: str = _setting("best", "adapters kept in OUT/adapters: each method's best run on validation loss, "
                                          "every run's, or none", choices=SAVE_ADAPTERS)
