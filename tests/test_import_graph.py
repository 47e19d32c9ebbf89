"""No import cycle inside codecplatform: every module's imports, read with ``ast``, form a graph
without cycles.

What counts as an edge from module A to module B (both inside the package):

* ``import B`` / ``from B import name`` / ``from B import submodule`` (to the submodule) anywhere
  in A: at module level, in class bodies and inside functions. A deferred import is still a
  dependency: a cycle through one fails when the function first runs, not at import time.
* Importing B also runs the ``__init__`` of each package above B, unless A is itself inside that
  package (its ``__init__`` then runs first anyway): ``from codecplatform.checkpoints.io import x``
  in ``codecplatform/models/base.py`` is an edge to ``codecplatform.checkpoints`` as well.
* Imports under ``if TYPE_CHECKING:`` do not count: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package`` (``__init__`` as the package)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``source`` (the code of ``module``) imports by name:
    ``from X import y`` gives ``X.y`` when that is a module, else ``X``; TYPE_CHECKING blocks skipped."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: None if is_package else -1]
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                found.add(f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found & modules


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules inside ``package`` that importing it runs (see the module docstring)."""
    modules = package_modules(package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_modules(path.read_text(), module, path.name == "__init__.py", set(modules)):
            parts = name.split(".")
            for i in range(1, len(parts)):  # the packages above it, unless the importer is inside them
                above = ".".join(parts[:i])
                if above in modules and not (module == above or module.startswith(above + ".")):
                    targets.add(above)
            targets.add(name)
        targets.discard(module)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search, sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_deferred_and_a_package_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (package / "b.py").write_text("from . import a\n")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.c import x\n")
    (package / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\n")
    (package / "d.py").write_text("from pkg.sub.c import x\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.sub", "pkg.sub.c"} and graph["pkg.sub.c"] == set()
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "a.py").write_text("")
    assert find_cycle(import_graph(package)) is None
    (package / "sub" / "c.py").write_text("import pkg.d\n")  # d -> sub (its __init__) -> c -> d
    assert find_cycle(import_graph(package)) == ["pkg.d", "pkg.sub", "pkg.sub.c", "pkg.d"]


def test_codecplatform_has_no_import_cycle():
    graph = import_graph(ROOT / "codecplatform")
    assert len(graph) > 50 and "codecplatform.models.base" in graph["codecplatform.models.codec"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
