"""What a read-only observer learns about a federation from its MQTT topics.

``fedmekt status`` (one short look) and ``fedmekt dashboard`` (watching for hours) feed every
message they receive to :meth:`FederationView.absorb` and read :meth:`FederationView.summary`.
Everything arrives from the network, so it is validated and bounded here: ids must be wire ids,
numbers must be finite, and a flood of made-up clients or rounds cannot grow memory without end.
Signed control messages are unwrapped without checking (an observer acts on nothing).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field

from fedmekt.observe.round_row import RoundRow
from fedmekt.transport.mqtt import Message
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import _ID as WIRE_ID
from fedmekt.wire.codec import WireError
from fedmekt.wire.signing import unwrap
from fedmekt.wire.topics import Topics

MAX_CLIENTS = 4096
MAX_ROUNDS_KEPT = 8  # rounds whose uploads are remembered (the current one is what people look at)
MAX_HISTORY = 10_000  # metric rows kept for the curves
MAX_UNREADABLE = 20


@dataclass
class ClientSeen:
    state: str
    modalities: list[str]
    last_seen: float | None = None  # unix time of its latest live message; None: only its retained status


@dataclass
class FederationView:
    """Presence, round, uploads and metrics of one federation, as far as the messages seen tell."""

    federation: str
    clients: dict[str, ClientSeen] = field(default_factory=dict)
    uploads: dict[int, dict[str, int]] = field(default_factory=dict)  # round -> client -> payload bytes
    announcement: fedwire.Announcement | None = None
    deadline: float | None = None  # the announced round's deadline on our clock (``now`` of its arrival + timeout)
    manifest: fedwire.FederationManifest | None = None  # the current run's: its name and federation run id
    metrics: RoundRow | None = None  # the last round done
    history: dict[int, RoundRow] = field(default_factory=dict)  # round -> rounds of the run of ``metrics``
    unreadable: deque = field(default_factory=lambda: deque(maxlen=MAX_UNREADABLE))

    def __post_init__(self) -> None:
        self.topics = Topics(self.federation)
        self._depth = len(self.topics.prefix.split("/"))

    @property
    def subscriptions(self) -> list[str]:
        t = self.topics
        return [t.status_all, t.rounds, t.metrics, t.uploads_all, t.proxy_manifest]

    def absorb(self, msg: Message, now: float | None = None) -> None:
        """Take one message into account; unreadable ones are noted, never raised."""
        if not msg.payload:
            return
        now = time.time() if now is None else now
        parts = msg.topic.split("/")[self._depth:]
        try:
            if msg.topic == self.topics.rounds:
                self.announcement = fedwire.Announcement.from_bytes(unwrap(msg.payload))
                self.deadline = self.announcement.deadline_from(now, msg.expiry)
            elif msg.topic == self.topics.proxy_manifest:
                self.manifest = fedwire.FederationManifest.from_bytes(msg.payload)
            elif msg.topic == self.topics.metrics:
                self._take_metrics(msg.payload)
            elif len(parts) == 5 and parts[0] == "clients" and parts[2] == "upload":
                self._take_upload(parts[1], parts[3], len(msg.payload), now)
            elif len(parts) == 3 and parts[0] == "clients" and parts[2] == "status":
                status = fedwire.Status.from_bytes(msg.payload)
                seen = self._client(parts[1])
                seen.state, seen.modalities = status.state, list(status.modalities)
                if not msg.retain:
                    seen.last_seen = now
        except WireError as exc:
            self.unreadable.append(f"{msg.topic[:200]}: {exc.reason}")

    def _client(self, cid: str) -> ClientSeen:
        if cid not in self.clients:
            if not WIRE_ID.match(cid):
                raise WireError("client id is not a wire id")
            if len(self.clients) >= MAX_CLIENTS:
                raise WireError(f"more than {MAX_CLIENTS} clients: ignored")
            self.clients[cid] = ClientSeen("unknown", [])
        return self.clients[cid]

    def _take_upload(self, cid: str, round_text: str, size: int, now: float) -> None:
        if not (round_text.isdigit() and len(round_text) <= 9):
            raise WireError("upload round is not a number")
        rnd = int(round_text)
        seen = self._client(cid)
        seen.last_seen = now
        if rnd not in self.uploads:
            if len(self.uploads) >= MAX_ROUNDS_KEPT:
                oldest = min(self.uploads)
                if rnd < oldest:
                    return
                del self.uploads[oldest]
            self.uploads[rnd] = {}
        self.uploads[rnd][cid] = self.uploads[rnd].get(cid, 0) + size

    def _take_metrics(self, payload: bytes) -> None:
        try:
            row = RoundRow.parse(json.loads(payload))
        except (ValueError, UnicodeDecodeError):
            row = None
        if row is None:
            raise WireError("metrics are not a JSON object with a round number")
        if not row.same_run(self.metrics):
            self.history.clear()  # another run (a new folder, or a fresh run in the same one): its curves start over
        self.metrics = row
        if row.round in self.history or len(self.history) < MAX_HISTORY:
            self.history[row.round] = row

    def summary(self, now: float | None = None) -> dict:
        """What is running, as a plain JSON-ready dict: ``run`` and ``federation_run`` (the current run's name and
        id, from its manifest; None before one is seen), ``round_index`` (the round in progress) counted from 0 as
        on the wire, ``last_metrics`` (the last round done, :meth:`RoundRow.view`) numbered from 1."""
        now = time.time() if now is None else now
        a, m = self.announcement, self.manifest
        out = {"federation": self.federation, "run": (m.name or None) if m else None,
               "federation_run": (m.run or None) if m else None,
               "running": bool(a and not a.done), "finished": bool(a and a.done),
               "rounds_completed": None, "round_index": None, "selected": [], "deadline_s": None,
               "uploads_seen": [], "last_metrics": self.metrics.view() if self.metrics else None,
               "clients": {cid: {"state": c.state, "modalities": c.modalities, "last_seen": c.last_seen}
                           for cid, c in sorted(self.clients.items())},
               "unreadable": list(self.unreadable)}
        if a is not None and a.done:
            out["rounds_completed"] = a.rounds
        elif a is not None:
            rnd, selected = a.plan.get("round"), a.plan.get("selected")
            rnd = rnd if type(rnd) is int else -1
            selected = [s for s in selected if isinstance(s, str) and WIRE_ID.match(s)] \
                if isinstance(selected, list) else []
            out.update(round_index=rnd, selected=selected, deadline_s=round(self.deadline - now, 1),
                       uploads_seen=sorted(self.uploads.get(rnd, ())))
        return out

    def round_uploads(self, rnd: int | None) -> dict[str, int]:
        """Payload bytes per client seen for round ``rnd`` (empty when none or unknown)."""
        return dict(sorted(self.uploads.get(rnd, {}).items())) if rnd is not None else {}
