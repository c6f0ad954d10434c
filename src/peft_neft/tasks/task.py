"""What a task is: its data fields, its instruction, its metrics and its paired test; and the registry of tasks.

A :class:`Task` owns everything that differs between tasks, so adding one is one entry in
:data:`TASKS` (with its metrics function, here too). This module imports only the standard library,
so the command line reads the task names from it without loading a metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .metrics import Metric

_LANGUAGES = {"en": "English", "fr": "French", "de": "German", "cs": "Czech", "zh": "Chinese", "uk": "Ukrainian"}


def language_name(code: str) -> str:
    """``"fr"`` -> ``"French"``; anything unknown is used as given."""
    return _LANGUAGES.get(code.lower(), code)


@dataclass(frozen=True)
class Task:
    """A task kind: default JSON fields, the instruction, and the metrics it is scored and tested with.

    Attributes:
        name: the name on the command line and in a comparison's settings.
        source_field, target_field: the JSON fields of input and output in a ``.jsonl`` data file.
        instruction: a template with ``{source_lang}`` and ``{target_lang}``.
        metric_names: the metrics in table order (the names ``metrics`` gives them).
        metrics: ``metrics(char_level)`` builds the :class:`~peft_neft.tasks.metrics.Metric` objects.
    """

    name: str
    source_field: str
    target_field: str
    instruction: str
    metric_names: tuple[str, ...]
    metrics: Callable[[bool], tuple[Metric, ...]]

    def instruction_for(self, source_lang: str, target_lang: str) -> str:
        """The instruction with the language names filled in."""
        return self.instruction.format(source_lang=language_name(source_lang), target_lang=language_name(target_lang))

    def score(self, hypotheses: Sequence[str], references: Sequence[str], char_level: bool = False) -> dict[str, object]:
        """Each metric's corpus score and ``signatures`` (how each was computed)."""
        from .metrics import corpus_scores

        return corpus_scores(self.metrics(char_level), hypotheses, references)

    def paired_test(self, system: Sequence[str], baseline: Sequence[str], references: Sequence[str], *,
                    char_level: bool = False, samples: int | None = None) -> dict[str, dict[str, float]]:
        """Per metric, ``delta`` (system minus baseline) and the paired bootstrap ``p_value``."""
        from .significance import DEFAULT_SAMPLES, paired_bootstrap

        return paired_bootstrap(self.metrics(char_level), system, baseline, references,
                                samples=samples or DEFAULT_SAMPLES)

    def intervals(self, hypotheses: Sequence[str], references: Sequence[str], *, char_level: bool = False,
                  samples: int | None = None) -> dict[str, dict[str, float]]:
        """Per metric, the ``score`` and the half-width ``ci`` of its 95% bootstrap interval."""
        from .significance import DEFAULT_SAMPLES, bootstrap_intervals

        return bootstrap_intervals(self.metrics(char_level), hypotheses, references,
                                   samples=samples or DEFAULT_SAMPLES)


def _translation_metrics(char_level: bool) -> tuple[Metric, ...]:
    """BLEU and chrF at sacrebleu's defaults (``char_level`` does not apply)."""
    import sacrebleu

    from .metrics import SacrebleuMetric

    return SacrebleuMetric("bleu", sacrebleu.metrics.BLEU()), SacrebleuMetric("chrf", sacrebleu.metrics.CHRF())


def _summarization_metrics(char_level: bool) -> tuple[Metric, ...]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 on lowercase words (or on characters), and chrF at sacrebleu's defaults
    (character n-grams: no word tokenizer to choose, so it reads French, Chinese and English alike)."""
    import sacrebleu

    from .metrics import RougeMetric, SacrebleuMetric

    return (*(RougeMetric(name, char_level) for name in ("rouge1", "rouge2", "rougeL")),
            SacrebleuMetric("chrf", sacrebleu.metrics.CHRF()))


TASKS = {task.name: task for task in (
    Task("translation", "source", "target", "Translate this {source_lang} text into {target_lang}.",
         ("bleu", "chrf"), _translation_metrics),
    Task("summarization", "document", "summary",
         "Summarize this {source_lang} dialogue in {target_lang}, in one or two sentences.",
         ("rouge1", "rouge2", "rougeL", "chrf"), _summarization_metrics),
)}


def get_task(name: str) -> Task:
    """The registered task called ``name``; an unknown name is refused with the known ones."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; use one of {', '.join(sorted(TASKS))}.")
    return TASKS[name]
