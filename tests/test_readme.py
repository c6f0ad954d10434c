"""The README's minimal example runs as written (on the embedded SmolLM2 instead of the Hub) and warns nothing."""

from __future__ import annotations

import re
from fnmatch import fnmatch
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = '"HuggingFaceTB/SmolLM2-135M-Instruct"'


def test_minimal_example_runs_without_warnings(smollm2_dir, tmp_path, monkeypatch):
    section = README.read_text().split("## Minimal example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert HUB_ID in code
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scope: dict = {}
        exec(compile(code.replace(HUB_ID, repr(str(smollm2_dir))), str(README), "exec"), scope)
    assert not [str(w.message) for w in caught if "adapter" in str(w.message).lower()]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert not hasattr(scope["merged"], "peft_config")  # a plain transformers model


def test_relative_links_name_their_file_and_it_ships():
    # Links to the project's own files stay relative; each one's text is the path it points to, so the long
    # description on a package index still says where to look, and MANIFEST.in ships those files.
    root = README.parent
    manifest = (root / "MANIFEST.in").read_text()
    shipped = [p for line in manifest.splitlines() if line.startswith("include ") for p in line.split()[1:]]
    links = re.findall(r"\[([^\]]+)\]\(([^)]+)\)", README.read_text())
    relative = [(text, target.split("#")[0]) for text, target in links if not target.startswith(("http:", "https:"))]
    assert relative
    for text, target in relative:
        assert text == target and (root / target).is_file(), (text, target)
        assert any(fnmatch(target, pattern) for pattern in shipped), target
    assert "graft tests" in manifest and "graft docs/examples" in manifest
