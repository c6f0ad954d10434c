"""Run a function right after a top-level module is imported, or now if it already is.

``import peft_neft`` must register NeFT with peft, but importing peft costs seconds (it imports torch and
transformers, and transformers imports torchao where installed, which prints on CPU builds). Deferring the
registration to the moment peft itself is imported keeps ``import peft_neft`` and ``peft-neft --help`` at
the cost of the standard library, while every use of peft (``get_peft_model``, ``PeftModel.from_pretrained``,
transformers' adapter integration) still finds NeFT registered.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``name`` with the other finders and wraps its loader so that ``then`` runs after it."""

    def __init__(self, name: str, then: Callable[[], object]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        # Availability checks (transformers' among them) call find_spec without importing, so only a
        # finished load of the module counts: the loader of the spec the others find is wrapped, and the
        # hook leaves sys.meta_path once that load has run.
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
                self.then()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  (this spec's own loader instance)
        return spec


def call_after_import(name: str, then: Callable[[], object]) -> None:
    """Call ``then()`` once the top-level module ``name`` has been imported: now if it has, else right after."""
    if name in sys.modules:
        then()
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, then))
