""".ci/setup keeps a torch within pyproject.toml's range and installs torch 2.13.0 (CPU) only where none is.

Its torch step, .ci/setup_torch.py, runs here in throwaway virtual environments (no pip, nothing installed)
holding a stand-in torch distribution: a dist-info and a module that report a version, as a real torch's do,
without the multi-GB wheel."""

import os
import re
import socket
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "setup_torch.py"


def make_venv(folder: Path, torch_version: str | None) -> Path:
    """A venv without pip; with a stand-in torch ``torch_version`` where given. Returns its Python."""
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    if torch_version is not None:
        site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        dist = site / f"torch-{torch_version}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {torch_version}\n")
        (dist / "RECORD").write_text("")
        (site / "torch").mkdir()
        (site / "torch" / "__init__.py").write_text(f"__version__ = {torch_version!r}\n")
    return python


def run_setup_torch(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TORCH_INDEX_URL")}
    return subprocess.run([python, SCRIPT, *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_setup_runs_the_torch_step_and_never_pins_torch_again():
    setup = (ROOT / ".ci" / "setup").read_text()
    assert ".venv/bin/python .ci/setup_torch.py" in setup
    assert not re.search(r"pip_install[^\n]*torch==", setup), "a pinned torch in a pip call would replace the user's"


@pytest.mark.parametrize("installed", ["2.12.0", "2.11.0+cu128", "2.13.0+cpu"])
def test_a_torch_within_the_range_is_kept_and_it_says_so(tmp_path, installed):
    python = make_venv(tmp_path / "venv", installed)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_setup_torch(python)  # no --dry-run: it would install, and cannot (no pip in this venv)
    assert result.returncode == 0, result.stderr
    assert f"torch: {installed} is installed and within torch>=2.11 (pyproject.toml): kept" in result.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU index is added on Linux only")
def test_without_torch_it_installs_2_13_0_the_cpu_build_from_the_cpu_index(tmp_path, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as server:  # a reachable stand-in for PyTorch's CPU index
        index = f"http://127.0.0.1:{server.getsockname()[1]}/whl/cpu"
        monkeypatch.setenv("TORCH_CPU_INDEX_URL", index)
        result = run_setup_torch(make_venv(tmp_path / "venv", None), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "torch: none installed; installing torch 2.13.0, the CPU build: pip install" in result.stdout
    assert "torch==2.13.0" in result.stdout
    assert f"--extra-index-url {index}" in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU index is added on Linux only")
def test_an_unreachable_cpu_index_is_left_out_and_it_says_so(tmp_path, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed when the block ends: nothing listens there any more
    monkeypatch.setenv("TORCH_CPU_INDEX_URL", f"http://127.0.0.1:{port}/whl/cpu")
    result = run_setup_torch(make_venv(tmp_path / "venv", None), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"torch: http://127.0.0.1:{port}/whl/cpu cannot be reached; using pip's configured sources" in result.stdout
    assert "--extra-index-url" not in result.stdout and "torch==2.13.0" in result.stdout


def test_a_torch_outside_the_range_is_left_alone_and_the_setup_stops_saying_how_to_fix_it(tmp_path):
    result = run_setup_torch(make_venv(tmp_path / "venv", "2.10.1"))
    assert result.returncode == 1
    assert "torch: 2.10.1 is installed, but pyproject.toml needs torch>=2.11; left as it is" in result.stderr
    assert "pip install 'torch>=2.11'" in result.stderr
