"""The import graph: schema/ <- ingest/ <- search_app/, nothing upward, no cycles (lazy imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("schema", "ingest", "search_app")  # each may import only those before it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))
            if "__pycache__" not in p.parts}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `path` imports anywhere in it (top level, inside functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            # `from pkg import mod` names a module; `from mod import func` names the module itself.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != own and name not in LAYERS:
                found.add(name)
    return found


def layer_of(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if state.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def test_the_graph_is_read(graph) -> None:
    # The checker itself: it must see the edges we know exist, or the other tests prove nothing.
    assert "schema.catalog" in graph["ingest.worker"]
    assert "ingest.encoder" in graph["ingest.runtime"]  # a lazy import inside a function
    assert "search_app.web" in graph["search_app.cli"]


def test_imports_point_down_only(graph) -> None:
    upward = sorted(f"{a} imports {b}" for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))
    assert upward == [], "imports must point schema <- ingest <- search_app:\n" + "\n".join(upward)


def test_no_import_cycles(graph) -> None:
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_checker_finds_cycles_and_upward_edges() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("search_app.cli") > layer_of("ingest.worker") > layer_of("schema.vectors")


def test_console_script_points_at_the_top_layer() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vidsearch"] == "search_app.cli:main"
