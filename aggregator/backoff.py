"""Backoff: a selected client that sends no upload while online is selected less.

Such a client (a stolen login that heartbeats and never uploads, a gateway that cannot train) holds its round
open to the deadline and takes the place of an honest one. After its k-th such round in a row it sits out the
next min(2**(k-1), MAX_SIT_OUT) rounds; an absorbed upload clears its record. A selected client that went
offline (its Will came) no longer holds the round open and is not counted: a power cut is no misbehaviour.
A client sitting out is drawn only when no other client is selectable, and does not count towards
``--min-clients``. The record travels in each round's metrics row (``backoff``), so a resumed run plans the
rounds it would have planned; it depends only on who uploaded, so an undisturbed run equals the in-process one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_SIT_OUT = 16  # rounds


@dataclass
class Backoff:
    record: dict[str, tuple[int, int]] = field(default_factory=dict)  # client -> (misses in a row, first round
    # it may be drawn again)

    @classmethod
    def from_row(cls, row: dict | None) -> "Backoff":
        """The record a checkpoint's last metrics row left (none in rows from before backoff)."""
        saved = (row or {}).get("backoff") or {}
        try:
            return cls({str(c): (int(k), int(until)) for c, (k, until) in saved.items()})
        except (AttributeError, TypeError, ValueError):
            from fedmekt.errors import UserError

            raise UserError("the checkpoint's last metrics row has a malformed backoff record; move the run "
                            "folder away to start afresh") from None

    def to_row(self) -> dict[str, list[int]]:
        return {c: list(v) for c, v in sorted(self.record.items())}

    def sitting_out(self, rnd: int, clients: Iterable[str]) -> dict[str, str]:
        """Those of ``clients`` that sit out round ``rnd`` (0-based), each with why."""
        out = {}
        for c in sorted(clients):
            k, until = self.record.get(c, (0, 0))
            if until > rnd:
                out[c] = f"no upload in its last {k} selected round{'s' if k > 1 else ''} while online; " \
                         f"drawn again from round {until + 1}"
        return out

    def candidates(self, rnd: int, selectable: Sequence[str]) -> list[str]:
        """Whom round ``rnd`` draws from: the selectable clients not sitting out; all of them when none is left
        (better a doubtful client than no round)."""
        out = [c for c in selectable if c not in self.sitting_out(rnd, selectable)]
        return out or list(selectable)

    def close(self, rnd: int, selected: Sequence[str], absorbed: set[str], online: Iterable[str]) -> dict[str, str]:
        """Record round ``rnd``'s outcome; the clients that missed it, each with what follows."""
        online = set(online)
        missed = {}
        for c in selected:
            if c in absorbed:
                self.record.pop(c, None)
            elif c in online:
                k = self.record.get(c, (0, 0))[0] + 1
                sit = min(2 ** (k - 1), MAX_SIT_OUT)
                self.record[c] = (k, rnd + 1 + sit)
                missed[c] = f"selected, online and no upload ({k} round{'s' if k > 1 else ''} in a row): sits out " \
                            f"{sit} round{'s' if sit > 1 else ''}"
        return missed
