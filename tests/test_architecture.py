"""The package's import layering (docs/design.md, "Module map") holds, read from the source with ``ast``.

Every ``import`` counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import peft_neft

SRC = Path(peft_neft.__file__).resolve().parent

# Lowest first. A unit (a top-level module or subpackage of peft_neft) may import units of its own
# layer or of a lower one, never of a higher one. Keep this table and the one in docs/design.md alike.
LAYERS = [
    {"_targets", "_shapes", "_version", "_import_hook", "_lazy", "atomic", "errors", "outputs"},
    {"embedded_model", "settings", "tasks", "training"},
    {"tuner"},
    {"selection", "adapters"},
    {"analysis", "compare"},
    {"commands"},
    {"cli"},
]
TUNER_MAY_IMPORT = {"tuner"}  # a peft tuner package: torch, transformers, peft, safetensors and itself


def _module_name(path: Path) -> str:
    parts = ["peft_neft", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """peft_neft modules that the file at ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "peft_neft")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "peft_neft":
                base = node.module
            else:
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "peft_neft"


def _layer(unit: str) -> int:
    for number, layer in enumerate(LAYERS):
        if unit in layer:
            return number
    raise AssertionError(f"peft_neft.{unit} has no layer: add it to LAYERS here and to the module map in docs/design.md.")


def test_the_graph_is_read():
    assert "peft_neft.tuner.config" in GRAPH["peft_neft.tuner.model"]
    assert "peft_neft.tuner.config" in GRAPH["peft_neft.tuner.registration"]
    assert "peft_neft._targets" in GRAPH["peft_neft.selection.budget"]


def _reached_from_the_tuner() -> set[str]:
    """Every module the tuner's modules import, directly or through others (and the tuner's own)."""
    reached, todo = set(), [m for m in GRAPH if _unit(m) == "tuner"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(GRAPH.get(module, ()))
    return reached


def test_the_tuner_imports_nothing_above_it():
    reached = _reached_from_the_tuner()
    assert {_unit(m) for m in reached} <= TUNER_MAY_IMPORT, sorted(m for m in reached if _unit(m) not in TUNER_MAY_IMPORT)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _unit(m) != "peft_neft"))
def test_no_module_imports_a_higher_layer(module):
    upward = sorted(m for m in GRAPH[module] if _unit(m) != "peft_neft" and _layer(_unit(m)) > _layer(_unit(module)))
    assert not upward, f"{module} (layer {_layer(_unit(module))}) imports {upward} from a higher layer"


def test_the_package_face_is_imported_by_no_module():
    assert not [m for m, targets in GRAPH.items() if "peft_neft" in targets and m != "peft_neft"]


def test_no_import_circles():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            assert state.get(target) != "open", "import circle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_tuner_imports_no_third_party_package_but_torch_transformers_peft_and_safetensors():
    allowed = {"torch", "transformers", "peft", "safetensors", "peft_neft"}
    found = {}
    for path in sorted((SRC / "tuner").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    outside = {pkg: files for pkg, files in found.items() if pkg not in allowed and pkg not in sys.stdlib_module_names}
    assert not outside, outside
