"""The core has no circle of imports (issue 12), counting the imports inside functions too.

Every ``import diffcore.x`` / ``from diffcore.x import y`` / ``from diffcore import x`` / relative import in every
module of ``diffcore`` is an edge of a directed graph (an import inside a function is an edge like any other: hiding a
circle in a function does not remove it). A package's ``__init__`` is not an edge of its submodules' imports (Python
runs it first, but it only gathers names), so ``diffcore`` (the ``__init__``) may import every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: {modules of the same top-level package it imports}}`` for every ``.py`` file under ``root``."""
    top = root.name
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from pkg import submodule`
            for target in targets:
                if target == top or target.startswith(top + "."):
                    # the longest known module the dotted name starts with
                    while target and target not in files:
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of the graph, or ``None``; a package ``__init__`` is skipped as a target
    of its own submodules (see the module docstring)."""
    def edges(name: str) -> list[str]:
        return sorted(t for t in graph[name] if not name.startswith(t + "."))

    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for nxt in edges(name):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_the_core_has_no_circle_of_imports():
    graph = import_graph(REPO / "diffcore")
    assert "diffcore.config" in graph and "diffcore.train.engine" in graph  # the scan found the modules
    cycle = find_cycle(graph)
    assert cycle is None, "circle of imports in diffcore: " + " -> ".join(cycle)


def test_the_scan_sees_imports_inside_functions_and_relative_imports(tmp_path):
    """The checker itself: a circle hidden in a function body, and one through a relative import, are found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from pkg.b import g\n    return g\n")
    (pkg / "b.py").write_text("from pkg import c\n")
    (pkg / "c.py").write_text("def h():\n    import pkg.a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("from . import e\n")
    (pkg / "sub" / "e.py").write_text("from ..sub.d import x\n")
    graph = import_graph(pkg)
    # `from pkg import c` imports the package (its __init__) and the submodule c
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg", "pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.sub.d"] == {"pkg.sub", "pkg.sub.e"} and graph["pkg.sub.e"] == {"pkg.sub.d"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    (pkg / "c.py").write_text("import os\n")
    (pkg / "sub" / "e.py").write_text("x = 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_the_leaf_modules_import_nothing_else_from_the_core():
    graph = import_graph(REPO / "diffcore")
    assert graph["diffcore.errors"] == set()
    assert graph["diffcore.atomic"] <= {"diffcore.errors"}
