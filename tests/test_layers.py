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
