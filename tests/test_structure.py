"""The project's floors: melanoma_screen at the bottom, data_prep on it, the scripts on top.

Every import statement is read from the source (function bodies included, since a
lazy import is an arrow all the same), so the test sees what the code asks for,
not what happened to be imported in this process.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("melanoma_screen", "data_prep")
TOP_LEVEL_SCRIPTS = {path.stem for path in REPO_ROOT.glob("*.py")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """The project modules (and packages) that the file imports, as absolute dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            # `from . import metrics` imports a module, `from .metrics import x` a name: keep both readings.
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES or name in TOP_LEVEL_SCRIPTS}


def project_modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def known_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name refers to: itself, or its parent when the last part is a name inside it."""
    if name in modules:
        return name
    parent = name.rpartition(".")[0]
    return parent if parent in modules else None


def import_graph(package: str) -> dict[str, set[str]]:
    modules = project_modules(package)
    graph = {}
    for name, path in modules.items():
        targets = {known_module(target, modules) for target in imported_modules(path)}
        graph[name] = {target for target in targets if target and target != name and target != package}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_lazy_and_relative_imports():
    # inference imports the input check at the top, relatively; the ground floor's own graph must show it.
    assert "melanoma_screen.input_check" in import_graph("melanoma_screen")["melanoma_screen.inference"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_melanoma_screen_imports_nothing_above_it():
    upward = {}
    for name, path in project_modules("melanoma_screen").items():
        above = {target for target in imported_modules(path) if not target.startswith("melanoma_screen")}
        if above:
            upward[name] = sorted(above)
    assert not upward, f"melanoma_screen imports data_prep or a top-level script: {upward}"


def test_data_prep_imports_no_top_level_script():
    upward = {}
    for name, path in project_modules("data_prep").items():
        above = {target for target in imported_modules(path) if target.split(".")[0] in TOP_LEVEL_SCRIPTS}
        if above:
            upward[name] = sorted(above)
    assert not upward, f"data_prep imports a top-level script: {upward}"
