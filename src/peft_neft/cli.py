"""``peft-neft`` command line: a thin shell over the Python API.

Each subcommand is one module in :mod:`peft_neft.commands` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from . import commands
from ._version import __version__


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, except for options whose default means "not given"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return action.help
        if isinstance(default, (list, tuple)):  # as typed on the command line, not as a Python list
            shown = " ".join(str(v) for v in default).replace("%", "%%")
            return f"{action.help} (default: {shown})"
        return super()._get_help_string(action)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand accepts."""
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much of peft-neft's log to show on stderr")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="hide progress bars (shown only when stderr is a terminal anyway)")


def build_parser() -> argparse.ArgumentParser:
    """The ``peft-neft`` parser: one subcommand per module in :mod:`peft_neft.commands`."""
    parser = argparse.ArgumentParser(prog="peft-neft", description="Neuron-Level Fine-Tuning (NeFT) for peft.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not subcommands
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                                    formatter_class=_HelpFormatter)
        module.add_arguments(sub)
        _add_common_options(sub)
        sub.set_defaults(run=module.run)
    return parser


def configure_logging(level: str) -> None:
    """Show peft-neft's log records at ``level`` on stderr (the library alone stays quiet)."""
    logging.basicConfig(format="%(message)s")  # a no-op where logging is already set up
    logging.getLogger("peft_neft").setLevel(level)


@contextmanager
def _transformers_bars(shown: bool) -> Iterator[None]:
    """transformers' own bars (loading and writing weights) follow ``--no-progress`` too, for this command only."""
    if shown:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; any failure is one ``peft-neft CMD: error: ...`` line (``PEFT_NEFT_DEBUG=1``: traceback)."""
    args = build_parser().parse_args(argv)
    if args.progress is None:  # bars (tqdm, on stderr) only where someone watches them
        args.progress = sys.stderr.isatty()
    configure_logging(args.log_level)
    try:
        with warnings.catch_warnings(), _transformers_bars(args.progress):
            # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` each time it wraps a model:
            # a note for peft's maintainers that someone running a command can do nothing about.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            return int(args.run(args) or 0)
    except Exception as err:
        if os.environ.get("PEFT_NEFT_DEBUG", "") not in ("", "0"):
            raise
        message = " ".join(str(err).split()) or "(no message)"
        if not isinstance(err, (ValueError, TypeError, OSError)):  # not a known bad input: name it and offer more
            message = f"{type(err).__name__}: {message} (set PEFT_NEFT_DEBUG=1 for the traceback)"
        print(f"peft-neft {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
