"""The house rules of docs/training.md and DESIGN, checked on the import graph (static: every
``import`` / ``from ... import`` of a module, at its top or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
APPLICATION = ("contrastkit.train", "contrastkit.cli", "contrastkit.serve", "contrastkit.export")

#: Edges the library-wide cycle check tolerates: none (issue 27 removed the last ones).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "contrastkit").rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level and function-local alike, but not the
    ones under ``if TYPE_CHECKING:`` (annotations only; they never execute)."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> modules its import statements execute``, as Python runs them.

    ``from pkg import sub`` where ``sub`` is a module is an edge to ``pkg.sub``; ``from pkg import
    name`` for any other name is an edge to ``pkg`` (its ``__init__`` must have defined it).
    Importing ``a.b.c`` also runs the ``__init__`` of every package above it that the importer
    is not itself inside (a member's own package is already being imported when it runs).
    """
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        named: set[str] = set()
        for node in _runtime_imports(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if not node.module or node.level != 0:
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    named.add(sub if sub in mods else node.module)
            else:
                named |= {a.name for a in node.names}
        deps = {d for d in named if d in mods}
        for d in list(deps):
            parts = d.split(".")
            for i in range(1, len(parts)):
                package = ".".join(parts[:i])
                if package in mods and not name.startswith(package + "."):
                    deps.add(package)
        graph[name] = deps - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_library_never_imports_the_application() -> None:
    graph = _graph()
    library = [m for m in graph if not m.startswith((*APPLICATION, "contrastkit.report"))]
    library = [m for m in library if m != "contrastkit"]
    up = [(m, d) for m in library for d in graph[m] if d.startswith(APPLICATION)]
    assert up == []


def test_the_library_has_no_import_cycle() -> None:
    """Any cycle among the library's modules, through module-level or function-local imports:
    a function-local import that closes a loop is a cycle postponed, not removed. Members import
    their registry module and the package ``__init__`` imports the members, never the reverse."""
    graph = import_graph()
    library = {m for m in graph if not m.startswith((*APPLICATION, "contrastkit.report"))}
    library.discard("contrastkit")  # the top-level namespace re-exports everything
    edges = {
        m: {d for d in graph[m] if d in library and (m, d) not in KNOWN_CYCLE_EDGES}
        for m in library
    }
    cycles = find_cycles(edges)
    detail = [[(a, b) for a in c for b in sorted(edges[a]) if b in c] for c in cycles]
    assert cycles == [], detail


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_train_has_no_import_cycle_and_task_files_import_only_base() -> None:
    graph, mods = _graph(), _modules()
    train = {m for m in graph if m.startswith("contrastkit.train")}
    packages = {m for m in train if mods[m].name == "__init__.py"}
    edges = {m: {d for d in graph[m] if d in train and d not in packages} for m in train}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in edges[start]
        )

    assert [m for m in train if reaches(m, m, {m})] == []
    tasks = [m for m in train if m.startswith("contrastkit.train.tasks.") and m not in packages]
    for task in tasks:
        assert edges[task] <= {"contrastkit.train.tasks.base"}, (task, edges[task])
    assert "contrastkit.train.loop" not in graph["contrastkit.train.run"]


def test_functional_imports_only_itself_checks_and_collectives() -> None:
    """DESIGN rule 1: ``functional/`` imports only ``collectives`` (and the leaf ``_checks``)
    from outside itself, and ``collectives`` imports nothing else from contrastkit, so no loss
    can switch to a distributed twin that imports ``functional/`` back."""
    graph = _graph()
    allowed = {"contrastkit._checks", "contrastkit.collectives", "contrastkit.functional"}
    outside = [
        (m, d)
        for m in graph
        if m.startswith("contrastkit.functional")
        for d in graph[m]
        if not d.startswith("contrastkit.functional.") and d not in allowed
    ]
    assert outside == []
    assert graph["contrastkit.collectives"] == set()
    assert graph["contrastkit._checks"] == set()
