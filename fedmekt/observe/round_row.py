"""One round of one run, as every reader sees it: ``fedmekt report``, ``fedmekt runs``, ``status`` and the dashboard.

A run writes its rounds as JSON objects (``metrics.jsonl``; the aggregator also publishes each on the
``metrics`` topic) with many more fields (losses, timings …). The readers that people compare side by side
read them through :class:`RoundRow`, so they agree on what a round holds and on how it is numbered: ``round``
counts from 0 as files and the wire do; :attr:`RoundRow.number` from 1, as logs, bars, plots and every view
(:meth:`RoundRow.view`) number it. A row from the network is untrusted: :meth:`RoundRow.parse` keeps only
well-typed, finite, bounded values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

F1_PAPER = "f1_paper_"   # the paper's per-round metric: weighted F1 per 2000-step test chunk, chunk-averaged
COUNTS = ("selected", "absorbed", "bytes_up", "bytes_down")
_MODALITY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")   # as the wire spells ids
MAX_ROUND = 10**9


def f1_paper_key(modality: str) -> str:
    """The field of a round row holding the paper metric on test modality ``modality``."""
    return F1_PAPER + modality


def _count(value) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _name(value) -> str | None:
    """A run id as given (folder names may hold spaces), None unless it is short printable text."""
    return value if isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable() else None


@dataclass(frozen=True)
class RoundRow:
    """What a round of a run says to people: whose it is, which round, its paper F1 per modality, its traffic."""

    run: str                  # the run's id: its folder's name (one run per folder) or its name inside a folder
    round: int                # from 0, as in files and on the wire
    f1_paper: dict[str, float] = field(default_factory=dict)   # test modality -> paper metric
    federation_run: str | None = None   # the federation's run id on the wire (e<epoch>-<hex>), aggregator runs only
    selected: int | None = None
    absorbed: int | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None

    @property
    def number(self) -> int:
        """The round as people count it (logs, bars, plots, views): from 1."""
        return self.round + 1

    @classmethod
    def parse(cls, row: object) -> "RoundRow | None":
        """The row read from a file or a message, None when it is not an object with a round; ill-typed values
        (a count that is no count, a NaN F1, a made-up modality name) are dropped."""
        if not isinstance(row, dict) or type(row.get("round")) is not int or not 0 <= row["round"] < MAX_ROUND:
            return None
        f1 = {k[len(F1_PAPER):]: float(v) for k, v in row.items()
              if isinstance(k, str) and k.startswith(F1_PAPER) and _MODALITY.match(k[len(F1_PAPER):])
              and type(v) in (int, float) and math.isfinite(v)}
        return cls(_name(row.get("run")) or "", row["round"], f1, _name(row.get("federation_run")),
                   **{k: _count(row.get(k)) for k in COUNTS})

    def same_run(self, other: "RoundRow | None") -> bool:
        """Whether ``other`` is a round of this run (a folder used again for a fresh run has a new federation run)."""
        return other is not None and (other.run, other.federation_run) == (self.run, self.federation_run)

    def view(self) -> dict:
        """JSON for status and the dashboard, the round numbered from 1."""
        return {"run": self.run, "federation_run": self.federation_run, "round": self.number,
                "selected": self.selected, "absorbed": self.absorbed, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "f1": dict(sorted(self.f1_paper.items()))}


def parse_rows(rows: list[dict]) -> list[RoundRow]:
    """The round rows of a file, in its order (records that are no round row skipped)."""
    return [r for r in map(RoundRow.parse, rows) if r is not None]
