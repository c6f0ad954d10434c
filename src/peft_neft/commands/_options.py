"""What several commands share: flags built from a settings dataclass, usage errors, the device check, a config file.

Standard library only: the parser of every command is built from here for ``--help``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import types
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UsageError  # noqa: F401  (every command raises it from here)
from ..settings import CompareSettings

if TYPE_CHECKING:  # torch loads when a command runs, not when the parser is built
    from ..compare import CompareConfig
    from ..training.precision import Precision


def number(kind: type, *, at_least: float | None = None, above: float | None = None,
           below: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type``: an int or a finite float read from text, within the bounds; argparse names the option."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least:g}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be above {above:g}, got {text}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be below {below:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _detail(err: Exception) -> str:
    """What a :func:`number` said about a value (its bound), to follow the expected form; nothing for a bad form."""
    return f": {err}" if isinstance(err, argparse.ArgumentTypeError) else ""


class ListAction(argparse.Action):
    """Values given space- or comma-separated (``--seeds 0 1`` or ``--seeds 0,1``), each converted by ``element``."""

    def __init__(self, *args: Any, element: Callable[[str], Any] = str, **kwargs: Any) -> None:
        super().__init__(*args, nargs="+", **kwargs)
        self.element = element

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = [item for value in values for item in value.split(",") if item.strip()]
        try:
            setattr(namespace, self.dest, tuple(self.element(item) for item in items))
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise argparse.ArgumentError(
                self, f"expected {self.element.__name__} values, got {' '.join(values)!r}{_detail(err)}") from None


class MappingAction(argparse.Action):
    """``KEY=VALUE`` pairs (``--lr lora=1e-3 neft=3e-3``, repeatable) merged over the default mapping."""

    def __init__(self, *args: Any, element: Callable[[str], Any] = str, **kwargs: Any) -> None:
        super().__init__(*args, nargs="+", **kwargs)
        self.element = element

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        merged = dict(getattr(namespace, self.dest) or {})
        for value in values:
            key, _, text = value.partition("=")
            try:
                merged[key.strip()] = self.element(text)
            except (ValueError, argparse.ArgumentTypeError) as err:
                raise argparse.ArgumentError(
                    self, f"expected KEY=VALUE such as lora=1e-3, got {value!r}{_detail(err)}") from None
        setattr(namespace, self.dest, merged)


def _optional(convert: Callable[[str], Any], none_as: str) -> Callable[[str], Any]:
    """``convert``, except that ``none_as`` (any case) means ``None``."""
    def parse(text: str) -> Any:
        return None if text.strip().lower() == none_as else convert(text)

    parse.__name__ = convert.__name__
    return parse


def add_settings_arguments(parser: argparse.ArgumentParser, settings: type, *, only: tuple[str, ...] = (),
                           exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass ``settings`` (``--field-name``, plus ``metadata["aliases"]``).

    The default, help text, choices and value type come from the field, so they live in one place.
    """
    hints = typing.get_type_hints(settings)
    for item in fields(settings):
        if (only and item.name not in only) or item.name in exclude:
            continue
        meta = item.metadata
        names = [f"--{item.name.replace('_', '-')}", *meta.get("aliases", ())]
        kwargs: dict[str, Any] = {"dest": item.name, "default": _default(item), "help": meta["help"]}
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(*names, **kwargs, **_value_kind(hints[item.name], item.default, meta))


def _default(item: Field) -> Any:
    return item.default_factory() if item.default is MISSING else item.default


def _value_kind(hint: Any, default: Any, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    """The argparse keywords that read a value of type ``hint``; numbers are finite and within the field's bounds
    (``metadata`` keys ``at_least``, ``above``, ``below``)."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        (hint,) = inner
        return {"type": _optional(_checked(hint, meta), meta.get("none_as", "none"))}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true"}
    if typing.get_origin(hint) is dict:
        return {"action": MappingAction, "element": _checked(inner[1], meta)}
    if typing.get_origin(hint) is tuple:
        return {"action": ListAction, "element": _checked(inner[0], meta)}
    return {"type": _checked(hint, meta), **({"choices": meta["choices"]} if "choices" in meta else {})}


def _checked(kind: type, meta: typing.Mapping[str, Any]) -> Callable[[str], Any]:
    """``kind`` itself, or for numbers a :func:`number` with the field's bounds."""
    if kind not in (int, float):
        return kind
    return number(kind, **{k: meta[k] for k in ("at_least", "above", "below") if k in meta})


def settings_from_args(settings: type, args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``settings``' fields that the parsed ``args`` hold."""
    return {item.name: getattr(args, item.name) for item in fields(settings) if hasattr(args, item.name)}


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``, shared by every command that runs a model."""
    add_settings_arguments(parser, CompareSettings, only=("device", "dtype"))


def check_device(device: str, dtype: str) -> Precision:
    """The one :class:`~peft_neft.training.precision.Precision` of ``--device``/``--dtype`` (logged once); one this
    machine cannot honour is a usage error."""
    from ..training.precision import Precision

    try:
        return Precision.resolve(device, dtype)
    except ValueError as err:
        raise UsageError(str(err)) from None


def check_data(flag: str, specs: list[str] | tuple[str, ...]) -> None:
    """Refuse a data path that does not exist, before torch is imported (a Hub dataset name is tried when read)."""
    from ..tasks.data import data_source  # datasets, without torch

    for spec in specs:
        try:
            data_source(spec)
        except FileNotFoundError as err:
            raise UsageError(f"{flag}: {err}") from None


# Trainer's loggers (transformers.integrations.INTEGRATION_TO_CALLBACK): the module each imports and its pip package.
_LOGGERS = {"azure_ml": ("azureml", "azureml-core"), "clearml": ("clearml", "clearml"),
            "codecarbon": ("codecarbon", "codecarbon"), "comet_ml": ("comet_ml", "comet-ml"),
            "dagshub": ("dagshub", "dagshub"), "dvclive": ("dvclive", "dvclive"), "flyte": ("flytekit", "flytekit"),
            "kubeflow": None, "mlflow": ("mlflow", "mlflow"), "neptune": ("neptune", "neptune"),
            "swanlab": ("swanlab", "swanlab"), "tensorboard": ("tensorboard", "tensorboard"),
            "trackio": ("trackio", "trackio"), "wandb": ("wandb", "wandb")}


def check_report_to(name: str) -> None:
    """Refuse a ``--report-to`` logger that Trainer does not know or whose package is not installed, before any work
    (Trainer itself fails only when training starts, and for tensorboard blames the PyTorch version)."""
    if name in ("none", "all"):
        return
    if name not in _LOGGERS:
        raise UsageError(f"--report-to {name!r} is not one of Trainer's loggers; choose none, all, or one of "
                         f"{', '.join(_LOGGERS)}.")
    needed = _LOGGERS[name]  # kubeflow: configured by the environment, no package
    if needed and importlib.util.find_spec(needed[0]) is None and not (
            name == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None):
        raise UsageError(f"--report-to {name} needs the {needed[1]} package, which is not installed: "
                         f"pip install {needed[1]}, or pass --report-to none.")


def read_config_file(path: str) -> dict[str, Any]:
    """The settings of a ``--config`` file: a YAML (``.yaml``/``.yml``) or JSON mapping of option names to values."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read it ({err.strerror or err}); give a YAML or JSON file.") from None
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"--config {path} is not valid YAML ({' '.join(str(err).split())}); fix the file.") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--config {path} is not valid JSON ({err}); fix it, or name a YAML file .yaml.") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path} must hold a mapping of option names to values, such as 'max_steps: 5'.")
    return values


def config_tokens(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """The ``--config`` file as command-line tokens for ``parser``: flags given after them override them."""
    tokens = []
    for key, value in read_config_file(path).items():
        action = parser._option_string_actions.get(f"--{str(key).replace('_', '-')}")
        if action is None or key in ("config", "help"):
            raise UsageError(f"--config {path}: {parser.prog} has no option {key!r}; the keys are its long option "
                             "names, such as max_steps or batch-size (see --help).")
        tokens += _tokens(action, action.option_strings[0], value)
    return tokens


def _tokens(action: argparse.Action, flag: str, value: Any) -> list[str]:
    """The tokens that give ``action`` the value ``value`` read from a config file."""
    if value is None:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if value else f"--no-{flag[2:]}"]
    if action.nargs == 0:  # a flag (--frugal, --no-progress): given or not
        return [flag] if value else []
    if isinstance(value, dict):
        return [flag, *(f"{k}={v}" for k, v in value.items())]
    if isinstance(value, (list, tuple)):
        items = [method_text(v) if isinstance(v, dict) else str(v) for v in value]
        return [flag, *items] if action.nargs in ("+", "*") else [flag, ",".join(items)]
    return [flag, str(value)]


def method_text(entry: dict[str, Any]) -> str:
    """A method of a ``--config`` file's ``methods`` list given as a mapping, as ``--methods`` writes it:
    ``{method: 'neft:match-lora:8', score: taylor, spread: module}`` is ``neft[score=taylor,spread=module]:match-lora:8``
    (``targets`` may be a list)."""
    if not isinstance(entry.get("method"), str):
        raise UsageError(f"A method given as a mapping in a --config file names its method, such as "
                         f"{{method: 'neft:match-lora:8', score: gradient}}; got {entry}.")
    head, _, budget = entry["method"].partition(":")
    options = ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                       for k, v in entry.items() if k != "method")
    return f"{head}[{options}]:{budget}"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, read by :mod:`peft_neft.cli` before the command's own flags."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML or JSON file of settings, keyed by long option names (max_steps: 5, "
                             "batch-size: 4, ...); flags given on the command line override it")


def add_comparison_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """The options of a comparison (``compare``, ``demo``): seeds, threads and every setting of a comparison."""
    parser.add_argument("--seeds", "--seed", action=ListAction, element=number(int), default=(0,),
                        help="seeds, one run of each method per seed (space- or comma-separated)")
    parser.add_argument("--threads", type=number(int, at_least=1), help="torch CPU threads (default: torch's choice)")
    add_settings_arguments(parser, CompareSettings, exclude=exclude)


def check_out_folder(out: str, inputs: dict[str, str], overwrite: bool) -> None:
    """Refuse a results folder that cannot be one, or would lose what is there, before anything is trained."""
    from ..outputs import check_output

    path = Path(out)
    if (path / "results.json").is_dir():
        raise UsageError(f"{path / 'results.json'} is a folder, so no results can be stored there; "
                         "move it away or give another --out folder.")
    check_output(out, inputs, folder=True, overwrite=overwrite,
                 ours=lambda p: (p / "results.json").is_file() or holds_only_results(p))


# What a comparison writes in its folder; the first training's checkpoints come before results.json.
_RESULTS_ENTRIES = ("results.json", "results.md", "results.png", "results-lr.png", "outputs", "checkpoints", "runs",
                    "adapters")


def holds_only_results(folder: Path) -> bool:
    """Whether every entry of ``folder`` is one a comparison writes (with the hidden temporaries of its atomic
    writes): the folder of a comparison interrupted before its first result, which the same command resumes."""
    return all(entry.name.lstrip(".").startswith(_RESULTS_ENTRIES) for entry in folder.iterdir())


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: allow an output folder that already holds files the command did not write."""
    parser.add_argument("--overwrite", action="store_true", help=f"write {what} into a non-empty folder that this "
                        "command did not make (its files may be replaced)")


def compare_config(args: argparse.Namespace, **fixed: Any) -> tuple[CompareConfig, Precision]:
    """The :class:`~peft_neft.compare.CompareConfig` of ``args`` (``fixed`` overrides), checked, and its precision."""
    from ..compare import CompareConfig

    try:
        config = CompareConfig(**{**settings_from_args(CompareSettings, args), **fixed})
    except ValueError as err:
        raise UsageError(str(err)) from None
    return config, check_device(config.device, config.dtype)


def run_comparison(args: argparse.Namespace, config: CompareConfig, precision: Precision, data: dict,
                   model_path: str, model_id: str, data_name: str = "") -> None:
    """Train and evaluate ``args.methods`` x ``args.seeds`` into ``args.out``, then print the table and the adapters."""
    import functools

    import torch

    from ..compare import compare, parse_methods
    from ..embedded_model import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    if not has_matplotlib():
        print("matplotlib is not installed, so the plot (results.png) is skipped; pip install matplotlib to draw it.")
    # picklable; named by its Hub id where it has one, which every adapter saved from it records
    load = functools.partial(load_model, model_path, dtype=torch.float32)
    compare(load, load_tokenizer(model_path), data, parse_methods(args.methods), args.seeds, args.out, config,
            model_id=model_id, progress=args.progress, precision=precision, data_name=data_name)
    print(Path(args.out, "results.md").read_text(encoding="utf-8"), end="")  # table and paired tests
    adapters = sorted(p.name for p in Path(args.out, "adapters").glob("*") if p.is_dir())
    if adapters:
        print(f"adapters (peft folders; NeFT's with its selection.safetensors): {args.out}/adapters/ "
              f"({', '.join(adapters)})")


def has_matplotlib() -> bool:
    """Whether the optional matplotlib, which draws ``results.png``, can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def check_methods(text: str) -> None:
    """Refuse a ``--methods`` list with an unknown name before anything is loaded."""
    from ..compare import parse_methods

    try:
        parse_methods(text)
    except ValueError as err:
        raise UsageError(f"--methods: {err}") from None


def resume_note(args: argparse.Namespace) -> str:
    """What a Ctrl-C leaves of a comparison, and how to go on."""
    return f"the finished runs are kept in {args.out}/results.json; run the same command again to resume."
