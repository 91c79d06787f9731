"""The layout stays as ARCHITECTURE.md draws it: every import runs down, and none goes round in a
circle. Read from the source with `ast`, type-only imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "llmbatch"

# Each folder of the package and the folders it may import from (its own modules always).
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "layers": set(),
    "models": {"layers"},
    "engine": {"models", "layers"},
    "runtime": {"engine", "models", "layers"},
    "data": set(),
    "integrations": set(),
    "monitor": {"data", "engine"},
    "llm": {"data", "integrations", "monitor", "runtime", "engine", "models"},
    "_fixtures": {"data", "models"},
    "cli": {"llm", "monitor", "data", "runtime", "engine", "_fixtures"},
}


def module_files() -> dict[str, Path]:
    files = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (a ``from X import Y`` of a submodule Y counts
    as importing X.Y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def test_every_folder_is_in_the_layout(graph):
    folders = {folder_of(m) for m in graph if "." in m and (SRC / PACKAGE / folder_of(m)).is_dir()}
    assert folders == set(ALLOWED_IMPORTS), "a new folder needs its place in ALLOWED_IMPORTS"


def test_imports_run_down_between_folders(graph):
    wrong = _upward_imports(graph)
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_no_import_circle(graph):
    circles = _strongly_connected(graph)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_checks_see_a_planted_circle_and_upward_import():
    graph = {
        "llmbatch.engine.a": {"llmbatch.engine.b", "llmbatch.models.base"},
        "llmbatch.engine.b": {"llmbatch.engine.a", "llmbatch.llm.stages"},
    }
    assert _strongly_connected(graph) == [["llmbatch.engine.a", "llmbatch.engine.b"]]
    assert _upward_imports(graph) == ["llmbatch.engine.b imports llmbatch.llm.stages"]


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if folder_of(module) in ALLOWED_IMPORTS
        and folder_of(target) != folder_of(module)
        and folder_of(target) not in ALLOWED_IMPORTS[folder_of(module)]
    )


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of two or more modules that import each other, directly or round about."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups
