"""Every Python block of README.md and docs/*.md runs as written (docs/results*.md hold results, not examples).

A block runs in a fresh Python process, in an empty folder, offline; the embedded model's Hub id
(``HuggingFaceTB/SmolLM2-135M-Instruct``) is replaced by its local folder, as nothing here can reach the Hub.
A block that names SmolLM2 loads it, so its test is ``slow``.

An HTML comment on the line before a block's opening fence says that it does not run here:

- ``<!-- fragment -->``: a piece of a larger program;
- ``<!-- needs: cuda -->``: it needs an NVIDIA GPU (``needs: multi-gpu``: more than one), and runs only where
  there is one.

A block that does not run is checked with pyflakes: it may name nothing it does not define or import.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_BLOCK = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```python\n(.*?)^```", re.S | re.M)
_UNDEFINED = ("UndefinedName", "UndefinedLocal", "UndefinedExport")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int
    marker: str  # the HTML comment before the fence, "" when there is none
    code: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def _blocks() -> list[Block]:
    files = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("results"))]
    found = []
    for file in files:
        text = file.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(2))  # the fence's line, 1-based
            found.append(Block(file, line, (match.group(1) or "").strip("<!-> "), match.group(2)))
    return found


BLOCKS = _blocks()
RUNNABLE = [b for b in BLOCKS if not b.marker]
_NEEDS = {"needs: cuda": 1, "needs: multi-gpu": 2}


def _params(blocks: list[Block]) -> list:
    return [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if "SmolLM2" in b.code else []) for b in blocks]


def test_every_block_is_found_and_every_marker_is_known():
    assert len(BLOCKS) >= 5 and {b.file.name for b in BLOCKS} >= {"README.md", "selection.md", "analysis.md"}
    for block in BLOCKS:
        assert block.marker in ("", "fragment", *_NEEDS), f"{block.id}: unknown marker {block.marker!r}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_names_nothing_undefined(block):
    from pyflakes.api import check
    from pyflakes.reporter import Reporter

    class Collect(Reporter):
        def __init__(self):
            self.messages = []

        def flake(self, message):
            self.messages.append(message)

        def syntaxError(self, filename, msg, lineno, offset, text):
            self.messages.append(f"syntax error at line {lineno}: {msg}")

    reporter = Collect()
    check(block.code, block.id, reporter)
    problems = [str(m) for m in reporter.messages if isinstance(m, str) or type(m).__name__ in _UNDEFINED]
    assert not problems, problems


@pytest.mark.parametrize("block", _params(RUNNABLE + [b for b in BLOCKS if b.marker in _NEEDS]))
def test_block_runs(block, tmp_path, request):
    gpus = _NEEDS.get(block.marker, 0)
    if gpus and torch.cuda.device_count() < gpus:
        pytest.skip(f"{block.id} needs {gpus} CUDA GPU(s), this machine has {torch.cuda.device_count()}")
    code = block.code
    if HUB_ID in code:
        code = code.replace(HUB_ID, str(request.getfixturevalue("smollm2_dir")))
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{block.id} failed:\n{done.stderr[-4000:]}"
