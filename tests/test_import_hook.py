"""``call_after_import`` runs its function after a real import of the module, once, and not on a mere probe."""

import importlib
import importlib.util
import sys

import pytest

from peft_neft._import_hook import call_after_import


@pytest.fixture
def module_on_path(tmp_path, monkeypatch):
    """A fresh importable top-level module that records, when it runs, what had been called so far."""
    name = f"hooked_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("import builtins\nSEEN_AT_IMPORT = list(builtins._hook_calls)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins._hook_calls", [], raising=False)
    yield name
    sys.modules.pop(name, None)


def test_runs_after_the_module_is_executed_and_only_once(module_on_path):
    import builtins

    call_after_import(module_on_path, lambda: builtins._hook_calls.append(module_on_path in sys.modules))
    assert builtins._hook_calls == []
    assert importlib.util.find_spec(module_on_path) is not None  # an availability probe is not an import
    assert builtins._hook_calls == []
    module = importlib.import_module(module_on_path)
    assert module.SEEN_AT_IMPORT == []  # not before the module's own code
    assert builtins._hook_calls == [True]
    importlib.reload(module)
    assert builtins._hook_calls == [True]


def test_runs_at_once_when_the_module_is_already_imported(module_on_path):
    import builtins

    importlib.import_module(module_on_path)
    call_after_import(module_on_path, lambda: builtins._hook_calls.append("now"))
    assert builtins._hook_calls == ["now"]


def test_a_failed_import_keeps_the_hook_for_the_next_try(module_on_path, tmp_path):
    import builtins

    source = tmp_path / f"{module_on_path}.py"
    good = source.read_text()
    source.write_text("raise RuntimeError('broken')\n")
    call_after_import(module_on_path, lambda: builtins._hook_calls.append("ran"))
    with pytest.raises(RuntimeError, match="broken"):
        importlib.import_module(module_on_path)
    assert builtins._hook_calls == []
    source.write_text(good)
    importlib.invalidate_caches()
    sys.modules.pop(module_on_path, None)
    importlib.import_module(module_on_path)
    assert builtins._hook_calls == ["ran"]
