"""peft's own test-suite, from the source distribution of the installed peft, for ``test_peft_conformance.py``.

``pip download --no-deps --no-binary :all: peft==<installed version>`` fetches the sdist once; its ``tests/``
folder is unpacked into a cache (``$PEFT_NEFT_CACHE`` or ``~/.cache/peft-neft``) and imported as the package
``peft_upstream_tests``. ``.ci/setup`` prefetches it: ``python tests/peft_sdist.py``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

PACKAGE = "peft_upstream_tests"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "peft-neft"
    return Path(os.environ.get("PEFT_NEFT_CACHE", default)) / "peft-sdist"


def fetch_tests(version: str | None = None) -> tuple[Path | None, str]:
    """The unpacked ``tests/`` folder of peft ``version`` (default: the installed one), or ``None`` and why not."""
    version = version or importlib.metadata.version("peft")
    target = cache_dir() / f"peft-{version}" / "tests"
    if (target / "testing_common.py").is_file():
        return target, ""
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent) as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
             "--no-binary", ":all:", "--retries", "1", "--timeout", "15", f"peft=={version}", "-d", scratch],
            capture_output=True, text=True, timeout=300,
        )
        archives = list(Path(scratch).glob("peft-*.tar.gz"))
        if done.returncode or not archives:
            why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no archive"]
            return None, f"peft {version}'s source distribution could not be downloaded ({why[0]})"
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(f"peft-{version}/tests/")]
            archive.extractall(scratch, members=members, filter="data")
        unpacked = Path(scratch) / f"peft-{version}"
        if not (unpacked / "tests" / "testing_common.py").is_file():
            return None, f"peft {version}'s source distribution has no tests/testing_common.py"
        try:
            unpacked.rename(target.parent)  # atomic: a half-unpacked folder is never found
        except OSError:  # another process unpacked it first
            if not (target / "testing_common.py").is_file():
                raise
    return target, ""


def import_upstream(module: str, tests_dir: Path) -> types.ModuleType:
    """Import ``tests_dir/<module>.py`` as ``peft_upstream_tests.<module>`` (its relative imports resolve)."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(tests_dir)]
        sys.modules[PACKAGE] = package
    # testing_common imports diffusers only to ask `isinstance(model, StableDiffusionPipeline)`, which no model
    # here is; without diffusers installed a stand-in class answers the same, and leaves sys.modules again.
    shim = importlib.util.find_spec("diffusers") is None and "diffusers" not in sys.modules
    if shim:
        stand_in = types.ModuleType("diffusers")
        stand_in.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
        sys.modules["diffusers"] = stand_in
    try:
        return importlib.import_module(f"{PACKAGE}.{module}")
    finally:
        if shim:
            sys.modules.pop("diffusers", None)


if __name__ == "__main__":  # .ci/setup: prefetch into the cache
    found, reason = fetch_tests()
    print(found or reason)
    if found is None:
        sys.exit(1)
