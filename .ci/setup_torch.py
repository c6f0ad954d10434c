"""torch for the virtual environment whose Python runs this: keep an installed one, install one only where none is.

Run by .ci/setup as ``.venv/bin/python .ci/setup_torch.py``; standard library only (a fresh venv has nothing else).

- A torch within the range pyproject.toml allows (CPU or CUDA build, any version of that range) is kept.
- Where none is installed, torch==2.13.0 is: the CPU build, from PyTorch's CPU wheel index on Linux, where the
  package index's torch is the multi-GB CUDA build (``TORCH_INDEX_URL`` names another index, e.g. a CUDA one).
  Where that index cannot be reached (an offline machine with a local wheel mirror), pip's own configured sources
  are used instead, and it says so; ``TORCH_CPU_INDEX_URL`` replaces the CPU index's address (a mirror).
- A torch outside the range is left as it is, and the set-up stops, saying how to fix it.

It prints what it did. ``--dry-run`` prints the pip command instead of running it.
"""

from __future__ import annotations

import operator
import os
import platform
import re
import socket
import subprocess
import sys
import urllib.parse
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DEFAULT = "2.13.0"  # the version the project is tested with
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}


def torch_range(pyproject: Path) -> str:
    """The version range of torch in pyproject.toml's dependencies, e.g. ``>=2.11``."""
    match = re.search(r'^\s*"torch\s*([^";\[]*)"', pyproject.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise SystemExit(f"{pyproject} lists no torch dependency")
    return match.group(1).strip()


def _release(text: str) -> tuple[int, ...]:
    """The release numbers of a version (``2.12.0+cpu`` -> (2, 12, 0)); a pre-release counts as its release."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", text).group().split("."))


def within(installed: str, spec: str) -> bool:
    """Whether version ``installed`` meets every clause (``>=``, ``<``, ``==``, ...) of ``spec``."""
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, wanted = re.fullmatch(r"(>=|<=|==|!=|>|<)\s*([\w.]+)", clause).groups()
        have, need = _release(installed), _release(wanted)
        width = max(len(have), len(need))
        if not _OPS[op](have + (0,) * (width - len(have)), need + (0,) * (width - len(need))):
            return False
    return True


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds."""
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def install_command() -> list[str]:
    """pip's command for torch==DEFAULT: a named index, else the CPU index on Linux where it can be reached."""
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", f"torch=={DEFAULT}"]
    index = os.environ.get("TORCH_INDEX_URL")
    if not index and platform.system() == "Linux":
        cpu_index = os.environ.get("TORCH_CPU_INDEX_URL") or CPU_INDEX
        if reachable(cpu_index):
            index = cpu_index
        else:  # pip would retry it for every package; an offline machine has its wheels in pip's own sources
            print(f"torch: {cpu_index} cannot be reached; using pip's configured sources")
    return command + (["--extra-index-url", index] if index else [])


def main(argv: list[str]) -> int:
    dry_run = "--dry-run" in argv
    spec = torch_range(Path(__file__).resolve().parents[1] / "pyproject.toml")
    try:
        installed = version("torch")
    except PackageNotFoundError:
        installed = None
    if installed is not None and within(installed, spec):
        print(f"torch: {installed} is installed and within torch{spec} (pyproject.toml): kept")
        return 0
    if installed is not None:
        print(f"torch: {installed} is installed, but pyproject.toml needs torch{spec}; left as it is, set-up stopped. "
              f"Install a torch in that range into this environment (CPU: pip install 'torch{spec}' --index-url "
              f"{CPU_INDEX}; with an NVIDIA GPU: pip install 'torch{spec}'), or remove it to have torch {DEFAULT} "
              "(CPU) installed, and run .ci/setup again.", file=sys.stderr)
        return 1
    command = install_command()
    print(f"torch: none installed; installing torch {DEFAULT}, the CPU build: {' '.join(command[2:])}")
    if dry_run:
        return 0
    subprocess.run(command, check=True)
    print(f"torch: {version('torch')} installed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
