"""When the aggregator answers sync requests (fedmekt/wire/sync.py): rate limits that a flood cannot beat.

A client is answered at most once per ``interval`` seconds: a request arriving sooner waits (the
latest one per client is kept) and is answered when its time comes, so a client that reconnects
twice quickly still gets what its last request says it lacks. A bulky part (the proxy set, a model
package) goes to one client at most once per ``bulk_interval`` seconds, whatever it asks: a
client that keeps asking for 50 MiB gets it once. Memory is bounded by ``max_clients`` entries.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from fedmekt.wire.sync import SyncRequest


def _bounded_set(d: OrderedDict, key, value, limit: int) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > limit:
        d.popitem(last=False)


@dataclass
class SyncLimiter:
    interval: float = 3.0
    bulk_interval: float = 30.0
    max_clients: int = 4096
    requests: int = 0  # requests taken: many more than ``answers`` means a client floods (both logged at the end)
    answers: int = 0  # requests answered; the others were replaced by a later one of the same client
    _waiting: OrderedDict = field(default_factory=OrderedDict)  # client -> latest unanswered request
    _answered: OrderedDict = field(default_factory=OrderedDict)  # client -> when it was last answered
    _bulk: OrderedDict = field(default_factory=OrderedDict)  # (client, part) -> when it was last sent

    def add(self, client: str, request: SyncRequest) -> None:
        self.requests += 1
        _bounded_set(self._waiting, client, request, self.max_clients)

    @property
    def waiting(self) -> int:
        """Clients whose latest request is not answered yet."""
        return len(self._waiting)

    def due(self, now: float) -> list[tuple[str, SyncRequest]]:
        """Requests to answer now (marked answered)."""
        out = [(c, r) for c, r in self._waiting.items() if now - self._answered.get(c, -math.inf) >= self.interval]
        for client, _ in out:
            del self._waiting[client]
            _bounded_set(self._answered, client, now, self.max_clients)
        self.answers += len(out)
        return out

    def next_due(self) -> float:
        """Monotonic time of the next waiting request's turn (inf when none waits)."""
        return min((self._answered.get(c, -math.inf) + self.interval for c in self._waiting), default=math.inf)

    def bulk(self, client: str, part: str, now: float) -> bool:
        """Whether ``part`` may go to ``client`` now (and if so, it counts as sent)."""
        if now - self._bulk.get((client, part), -math.inf) < self.bulk_interval:
            return False
        _bounded_set(self._bulk, (client, part), now, self.max_clients)
        return True
