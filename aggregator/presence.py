"""Who may be selected: clients online with the pair's modalities and a current proof of life.

A client's retained status says what it trains on; liveness comes only from what it published while we run
(a live birth or heartbeat status, or an upload): a retained "online" alone (a phantom, or a client that died
without its Will reaching us) keeps no client selectable. Statuses of clients outside the federation's
provisioned list are ignored (warned once each).
"""

from __future__ import annotations

import logging
import math
import time

from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import WireError

log = logging.getLogger("aggregator")


class Presence:
    """The online clients (id -> the pair's modalities they hold) and when each last proved it is alive."""

    def __init__(self, federation: str, pair: tuple[str, ...], known_clients: frozenset[str] | None,
                 liveness: float):
        self.federation, self.pair, self.known_clients, self.liveness = federation, pair, known_clients, liveness
        self.online: dict[str, tuple[str, ...]] = {}
        self._live: dict[str, float] = {}  # monotonic time a client last proved it is alive (not a retained status)
        self._unknown: set[str] = set()  # status ids outside known_clients, warned about once

    def on_status(self, client_id: str, payload: bytes, retained: bool = False) -> None:
        if not payload:  # a cleared retained status
            self.online.pop(client_id, None)
            return
        known = self.known_clients
        if known is not None and client_id not in known:
            if client_id not in self._unknown:
                self._unknown.add(client_id)
                log.warning("ignoring status of %s: not a provisioned client of %s", client_id, self.federation)
            return
        try:
            status = fedwire.Status.from_bytes(payload)
        except WireError as exc:
            log.warning("ignoring status of %s: %s", client_id, exc.reason)
            return
        mods = tuple(m for m in self.pair if m in status.modalities)
        if status.state == "online" and mods and set(status.modalities) <= set(self.pair):
            if client_id not in self.online:
                log.debug("%s online with %s", client_id, mods)
            self.online[client_id] = mods
            if not retained:
                self._live[client_id] = time.monotonic()
        else:
            if status.state == "online" and status.modalities:  # none: an inference-only gateway, never trained
                log.warning("ignoring %s: modalities %s do not fit the pair %s", client_id, status.modalities,
                            self.pair)
            self.online.pop(client_id, None)

    def mark_live(self, client_id: str) -> None:
        """An upload absorbed from ``client_id``: proof of life like a live status."""
        self._live[client_id] = time.monotonic()

    def selectable(self) -> list[str]:
        """Online clients whose liveness is current (see the module's docstring)."""
        now = time.monotonic()
        return sorted(c for c in self.online if now - self._live.get(c, -math.inf) <= self.liveness)
