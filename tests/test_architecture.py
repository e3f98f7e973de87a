"""The layers import only downward (docs/ARCHITECTURE.md): ops know nothing of the project,
models know ops, tasks know models, data modules know no model and no task, and only the run
layer, the entry points and the scripts put them together."""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# layer: the project modules it may import (besides itself)
ALLOWED = {
    "dfn.ops": set(),
    "dfn.errors": set(),
    "dfn.reference_results": set(),
    "dfn.models": {"dfn.ops", "dfn.errors"},
    "dfn.tasks": {"dfn.models", "dfn.ops", "dfn.errors"},
    "datamodules": {"dfn.errors"},
    "dfn.run": {"dfn.tasks", "dfn.models", "dfn.ops", "dfn.errors", "datamodules"},
    "entry": {"dfn", "datamodules", "scripts"},
}
LAYERS = sorted(ALLOWED, key=len, reverse=True)


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to; None outside the project."""
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    if module in ("dfn", "datamodules", "scripts") or module.startswith("scripts."):
        return "entry"
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {name for name in names if layer_of(name) is not None}
    return found


SOURCES = [
    p for folder in ("dfn", "datamodules", "scripts") for p in sorted((ROOT / folder).rglob("*.py"))
] + [ROOT / "train.py", ROOT / "eval.py"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_downward(path):
    name = module_name(path)
    own = layer_of(name) if path.parent != ROOT else "entry"
    assert own is not None, f"{name} is in no layer of the import test"
    for imported in project_imports(path):
        layer = layer_of(imported)
        if own == "entry" or layer == own:
            continue
        assert layer in ALLOWED[own], f"{name} ({own}) imports {imported} ({layer})"


def test_the_check_sees_an_upward_import(tmp_path):
    """The test above would catch a task imported by a data module."""
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom dfn.tasks.video import VideoPredictionTask\n")
    assert project_imports(bad) == {"dfn.tasks.video"}
    assert layer_of("dfn.tasks.video") not in ALLOWED["datamodules"]


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The project modules (of ``modules``) a file imports; ``from package import module`` names
    the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            }
    return found & modules


def test_no_two_modules_import_each_other():
    """Within a layer too, imports go one way (lazy ones included): no cycle of modules."""
    paths = {module_name(p): p for p in SOURCES if p.parent != ROOT}
    graph = {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, chain: list[str]) -> None:
        if name in chain:
            cycle = [*chain[chain.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name not in done:
            for imported in sorted(graph[name]):
                visit(imported, [*chain, name])
            done.add(name)

    for name in sorted(graph):
        visit(name, [])
