"""Tally of injected faults and bad inputs, printed at the end of the pytest run.

Tests call :func:`record`; the ``pytest_terminal_summary`` hook (registered from
tests/conftest.py via ``pytest_plugins``) prints the table, and when
``FEDMEKT_FAULT_LEDGER`` names a file the rows are also written there as JSON
(bench/bench_faults.py reads it).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass

import pytest


@dataclass
class Row:
    kind: str  # "fault", "bad input", "attack" or "privacy"
    what: str
    tried: int = 0
    handled: int = 0  # faults survived / bad inputs rejected / attacks refused / private rows not found
    accepted: int = 0  # bad-input cases that turned out valid (e.g. a mutation that changed nothing)
    lost: int = 0  # completed rounds or samples lost
    stalled: int = 0  # rounds that waited for a client that could never upload (closed short of their selection)


_ROWS: dict[tuple[str, str], Row] = defaultdict(lambda: Row("", ""))


def record(kind: str, what: str, *, tried: int = 1, handled: int = 1, accepted: int = 0, lost: int = 0,
           stalled: int = 0) -> None:
    row = _ROWS[(kind, what)]
    row.kind, row.what = kind, what
    row.tried += tried
    row.handled += handled
    row.accepted += accepted
    row.lost += lost
    row.stalled += stalled


def rows() -> list[Row]:
    return sorted(_ROWS.values(), key=lambda r: (r.kind, r.what))


def pytest_sessionfinish(session):
    """Under pytest-xdist each worker hands its rows to the controller, which prints the one table."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fault_ledger"] = [asdict(r) for r in rows()]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for r in getattr(node, "workeroutput", {}).get("fault_ledger", []):
        record(r["kind"], r["what"], tried=r["tried"], handled=r["handled"], accepted=r["accepted"], lost=r["lost"],
               stalled=r["stalled"])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("faults injected and bad inputs tried")
    tr.write_line(f"{'kind':<10} {'what':<58} {'tried':>7} {'handled':>8} {'valid':>6} {'lost':>5} {'stalled':>8}")
    for r in rows():
        tr.write_line(f"{r.kind:<10} {r.what:<58} {r.tried:>7} {r.handled:>8} {r.accepted:>6} {r.lost:>5} "
                      f"{r.stalled:>8}")
    for kind in ("fault", "bad input", "attack", "privacy"):
        sel = [r for r in rows() if r.kind == kind]
        if sel:
            tr.write_line(f"total {kind}: tried {sum(r.tried for r in sel)}, handled {sum(r.handled for r in sel)}, "
                          f"lost {sum(r.lost for r in sel)}, rounds stalled {sum(r.stalled for r in sel)}")
    path = os.environ.get("FEDMEKT_FAULT_LEDGER")
    if path:
        with open(path, "w") as f:
            json.dump([asdict(r) for r in rows()], f, indent=1)
