"""``peft-neft`` command line: a thin shell over the Python API.

Each subcommand is one module in :mod:`peft_neft.commands` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-neft", description="Neuron-Level Fine-Tuning (NeFT) for peft.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not subcommands
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; any failure is one ``peft-neft CMD: error: ...`` line (``PEFT_NEFT_DEBUG=1``: traceback)."""
    args = build_parser().parse_args(argv)
    try:
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
