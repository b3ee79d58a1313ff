"""The house rules of docs/training.md and DESIGN, checked on the import graph (static: every
``import`` / ``from ... import`` of a module, at its top or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
APPLICATION = ("contrastkit.train", "contrastkit.cli", "contrastkit.serve", "contrastkit.export")


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


def test_the_library_never_imports_the_application() -> None:
    graph = _graph()
    library = [m for m in graph if not m.startswith((*APPLICATION, "contrastkit.report"))]
    library = [m for m in library if m != "contrastkit"]
    up = [(m, d) for m in library for d in graph[m] if d.startswith(APPLICATION)]
    assert up == []


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
