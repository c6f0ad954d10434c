"""``peft-neft`` command line: a thin shell over the Python API.

Each subcommand is one module in :mod:`peft_neft.commands` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``, and may define ``interrupted(args) -> str``: what a
Ctrl-C leaves behind and how to resume.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import os
import pkgutil
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import commands
from .commands._options import UsageError, config_tokens
from ._version import __version__


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help (except where the default means "not given") and lists each
    option once: its ``--snake_case`` spelling, accepted everywhere, is left out."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default in ([], (), {}):
            return action.help
        if isinstance(default, dict):  # as typed on the command line
            shown = " ".join(f"{k}={v}" for k, v in default.items()).replace("%", "%%")
            return f"{action.help} (default: {shown})"
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default).replace("%", "%%")
            return f"{action.help} (default: {shown})"
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = copy.copy(action)
        shown.option_strings = [o for o in action.option_strings
                                if "_" not in o or o.replace("_", "-") not in action.option_strings]
        return super()._format_action_invocation(shown)


_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
_LOG_LEVEL_HELP = "how much of peft-neft's log to show on stderr (any case; before or after the command)"


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand accepts."""
    parser.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS,
                        help=_LOG_LEVEL_HELP + "; default: the one before the command, else INFO")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="hide progress bars (shown only when stderr is a terminal anyway)")


def _add_snake_case_spellings(parser: argparse.ArgumentParser) -> None:
    """Accept ``--batch_size`` for ``--batch-size`` (and so on), as transformers, trl and accelerate do."""
    for action in parser._actions:
        for name in list(action.option_strings):
            other = "--" + name[2:].replace("-", "_")
            if name.startswith("--") and other not in parser._option_string_actions:
                action.option_strings.append(other)
                parser._option_string_actions[other] = action


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def build_parser() -> argparse.ArgumentParser:
    """The ``peft-neft`` parser: one subcommand per module in :mod:`peft_neft.commands`."""
    parser = argparse.ArgumentParser(
        prog="peft-neft", formatter_class=_HelpFormatter, allow_abbrev=False,
        description="Neuron-Level Fine-Tuning (NeFT) for peft. Every --dashed-option is also accepted as "
                    "--snake_case_option. Exit status: 0 done, 1 failed, 2 bad usage, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, default="INFO", help=_LOG_LEVEL_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not subcommands
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                                    formatter_class=_HelpFormatter, allow_abbrev=False)
        module.add_arguments(sub)
        _add_common_options(sub)
        _add_snake_case_spellings(sub)
        sub.set_defaults(run=module.run, interrupted=getattr(module, "interrupted", _interrupted))
    _add_snake_case_spellings(parser)
    return parser


def _interrupted(args: argparse.Namespace) -> str:
    return "its outputs are written whole or not at all, so nothing half-written is left; run it again to redo it."


def _with_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with the settings of its ``--config FILE`` put before the command's own flags, which override them."""
    choices = _subparsers(parser)
    index = next((i for i, token in enumerate(argv) if token in choices), None)
    if index is None:
        return argv
    rest = argv[index + 1:]
    paths = [rest[i + 1] for i, token in enumerate(rest[:-1]) if token == "--config"]
    paths += [token.partition("=")[2] for token in rest if token.startswith("--config=")]
    if not paths:
        return argv
    if len(paths) > 1:
        raise UsageError(f"--config given {len(paths)} times; give one file and override its settings with flags.")
    return [*argv[:index + 1], *config_tokens(choices[argv[index]], paths[0]), *rest]


# Import-time chatter of torchao ("Failed to load ..._C_mxfp8...", "Detected no triton") and torch's pytree
# ("... is an Enum subclass ... register_constant()"): notes for those projects' maintainers, not for a user.
_CHATTER = ("torchao", "torch.utils._pytree")


@contextmanager
def command_logging(level: str) -> Iterator[None]:
    """peft-neft's log records at ``level`` on stderr, each once and never inside a progress bar; the libraries'
    import chatter hidden. For the duration of one command."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    package = logging.getLogger("peft_neft")
    chatter = [logging.getLogger(name) for name in _CHATTER]
    saved = package.level, package.propagate, package.handlers, [log.level for log in chatter]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    package.setLevel(level)
    package.propagate = False  # shown by this handler only, not a second time by an application's root handler
    package.handlers = [*package.handlers, handler]
    for log in chatter:
        log.setLevel(logging.ERROR)
    try:
        with logging_redirect_tqdm([package]):
            yield
    finally:
        package.level, package.propagate, package.handlers = saved[:3]
        for log, log_level in zip(chatter, saved[3]):
            log.setLevel(log_level)


def _transient_loading_bar(factory: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """transformers' "Loading weights" bar, shown while a model loads and cleared once it has (``leave=False``):
    a run loads its model several times, and each bar left behind was one more unlabelled line."""
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "leave": False}
    return factory(*args, **kwargs)


@contextmanager
def _transformers_bars(shown: bool) -> Iterator[None]:
    """transformers' own bars (loading and writing weights) follow ``--no-progress`` too, and its "Loading weights"
    bars clear themselves when done; for this command only."""
    from transformers.utils import logging as hf_logging

    if shown:
        previous = hf_logging.set_tqdm_hook(_transient_loading_bar)
        try:
            yield
        finally:
            hf_logging.set_tqdm_hook(previous)
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _close_progress_bars() -> None:
    """Close the bars a Ctrl-C left open: each ends its line, so the next message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A failure is one ``peft-neft CMD: error: ...`` line (``PEFT_NEFT_DEBUG=1``: traceback).

    Exit status: 0 done, 1 failed, 2 bad usage (argparse's own errors too), 130 interrupted (Ctrl-C).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _with_config_file(parser, argv)
    except UsageError as err:
        print(f"peft-neft: error: {err}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse's usage error (status 2, printed) or --help/--version (0)
        return int(done.code or 0)
    if args.progress is None:  # bars (tqdm, on stderr) only where someone watches them
        args.progress = sys.stderr.isatty()
    try:
        with command_logging(args.log_level), warnings.catch_warnings(), _transformers_bars(args.progress):
            # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` each time it wraps a model:
            # a note for peft's maintainers that someone running a command can do nothing about.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"peft-neft {args.command}: interrupted; {args.interrupted(args)}", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("PEFT_NEFT_DEBUG", "") not in ("", "0"):
            raise
        message = " ".join(str(err).split()) or "(no message)"
        if not isinstance(err, (ValueError, TypeError, OSError)):  # not a known bad input: name it and offer more
            message = f"{type(err).__name__}: {message} (set PEFT_NEFT_DEBUG=1 for the traceback)"
        print(f"peft-neft {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
