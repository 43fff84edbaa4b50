"""The stack's one-way dependencies, checked on the source: a reader sees the layers in the folders.

sensors (bottom) <- fedmekt (core) <- edge_client, aggregator, export <- fedmekt_cli (commands,
simulation). A module may import its own package and anything below it, never above.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"sensors": 0, "fedmekt": 1, "edge_client": 2, "aggregator": 2, "export": 2, "fedmekt_cli": 3}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in the file, including those inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & LAYER.keys()


@pytest.mark.parametrize("package", sorted(LAYER))
def test_imports_point_down(package: str) -> None:
    upward = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_packages(path):
            if LAYER[name] > LAYER[package] or (LAYER[name] == LAYER[package] and name != package
                                                 and LAYER[package] != 2):
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_sensors_imports_nothing_of_ours() -> None:
    ours = {name for path in (ROOT / "sensors").rglob("*.py") for name in imported_packages(path)}
    assert ours <= {"sensors"}, ours


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (package -> packages it imports) as a path, or [] when it has none."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return []


def test_middle_layer_has_no_import_cycle() -> None:
    """edge_client, aggregator and export may use one another, but one way only: a cycle (export/verify.py once
    imported edge_client.inference, which imports export) means neither can be read or shipped without the other."""
    middle = [p for p, level in LAYER.items() if level == 2]
    graph = {p: {n for path in (ROOT / p).rglob("*.py") for n in imported_packages(path)} & set(middle) - {p}
             for p in middle}
    assert not _cycle(graph), "import cycle between packages: " + " -> ".join(_cycle(graph))
