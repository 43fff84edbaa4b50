"""Who may be selected: clients online with the pair's modalities and a fresh proof of life.

A client's retained status says what it trains on; liveness comes only from proof bound to a nonce this
aggregator issued: a live (not retained) status that echoes the current liveness challenge, or the one before
it (a heartbeat on its way while a round opened), or an upload absorbed (it echoed the round's nonce). The
challenge is drawn afresh when the aggregator starts, as each round opens and after a reconnect (published
retained and signed on ``liveness``; a gateway echoes it at once, and with every heartbeat). So a retained
"online" (a phantom, or a client that died without its Will reaching us), a status queued in our saved
session while this aggregator was down, or a replayed one proves nothing; and a proof lasts at most two
rounds and ``liveness`` seconds. Statuses of clients outside the federation's provisioned list are ignored
(warned once each). A status without proof comes from a gateway of an older release: it is never selected
(said once per client); compatibility would reopen the hole.

Each challenge also says over how many seconds gateways should spread their answers (``answer_spread``): a
new nonce would otherwise make the whole fleet answer at once, a burst per round (10,000 gateways, 10,000
statuses within milliseconds). The window is the fleet at ``answer_rate`` answers per second, but never so
long that the answers come too late to count: at most a quarter of ``liveness`` and the last round's duration
(an answer to the nonce drawn as a round opens is needed by the selection two rounds on), and a gateway never
waits longer than its own heartbeat. The waits for proof (before round 0, for ``--min-clients``) go on as
soon as enough answers are in, so a wider window costs them only the time until those arrive.
"""

from __future__ import annotations

import logging
import secrets
import time

from aggregator.fleet import ClassGate
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import WireError

log = logging.getLogger("aggregator")


def answer_spread(fleet: int, answer_rate: float, liveness: float, round_s: float | None) -> float:
    """Seconds over which ``fleet`` gateways spread their answers to a new challenge (see the module's docstring);
    ``answer_rate`` 0: at once. ``round_s``: the last round's duration (None before the first)."""
    if answer_rate <= 0 or fleet <= 0:
        return 0.0
    caps = [liveness / 4] + ([round_s] if round_s is not None else [])
    return round(min(fleet / answer_rate, *caps), 3)


class Presence:
    """The online clients (id -> the pair's modalities they hold) and when each last proved it is alive."""

    def __init__(self, federation: str, pair: tuple[str, ...], known_clients: frozenset[str] | None,
                 liveness: float, class_gate: ClassGate | None = None):
        self.federation, self.pair, self.known_clients, self.liveness = federation, pair, known_clients, liveness
        self.class_gate = class_gate  # device classes the federation accepts (aggregator/fleet.py)
        self.online: dict[str, tuple[str, ...]] = {}
        self.classes: dict[str, str | None] = {}  # client -> the device class its last online status declared
        self._live: dict[str, tuple[float, str]] = {}  # client -> (monotonic time of its last proof, nonce echoed)
        self._nonces: tuple[str, ...] = ()  # the liveness challenges honoured: the current one first
        self._unknown: set[str] = set()  # status ids outside known_clients, warned about once
        self._unproven: set[str] = set()  # clients whose live status proved nothing, said once each
        self._unproved_since: dict[str, float] = {}  # client -> first live status without proof (none since)

    @property
    def challenge(self) -> str:
        """The current liveness challenge's nonce ("" before the first)."""
        return self._nonces[0] if self._nonces else ""

    def new_challenge(self, keep_previous: bool) -> str:
        """Draw the next challenge. ``keep_previous``: proofs of the current one still count (a round opens, a
        reconnect: heartbeats are on their way); at a start nothing from before counts."""
        nonce = secrets.token_hex(16)
        self._nonces = (nonce, self._nonces[0]) if keep_previous and self._nonces else (nonce,)
        return nonce

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
        if self.class_gate is not None and self.class_gate.refused(client_id, status):
            self.online.pop(client_id, None)
            return
        mods = tuple(m for m in self.pair if m in status.modalities)
        if status.state == "online" and mods and set(status.modalities) <= set(self.pair):
            if client_id not in self.online:
                log.debug("%s online with %s", client_id, mods)
            self.online[client_id] = mods
            self.classes[client_id] = status.device_class
            if not retained:
                self._proof(client_id, status.proof)
        else:
            if status.state == "online" and status.modalities:  # none: an inference-only gateway, never trained
                log.warning("ignoring %s: modalities %s do not fit the pair %s", client_id, status.modalities,
                            self.pair)
            self.online.pop(client_id, None)

    def _proof(self, client_id: str, proof: str) -> None:
        """A live status: proof of life when it echoes a challenge we honour. Without any (a gateway's birth, sent
        before it heard the challenge) it proves nothing, which is said once a client has sent only such for
        ``liveness`` s (a gateway of an older release)."""
        now = time.monotonic()
        if proof and proof in self._nonces:
            self._live[client_id] = (now, proof)
            self._unproved_since.pop(client_id, None)
            return
        if client_id in self._unproven or len(self._unproven) >= 4096:
            return
        if proof:
            self._unproven.add(client_id)
            log.info("a live status of %s echoes no liveness challenge that this aggregator honours (queued while it "
                     "was away, replayed, or older than the last two): not taken as proof that it is alive", client_id)
        elif client_id not in self._live and len(self._unproved_since) < 4096:
            since = self._unproved_since.setdefault(client_id, now)
            if now - since > self.liveness:
                self._unproven.add(client_id)
                log.warning("%s has been online for %.0f s without echoing the liveness challenge (a gateway of an "
                            "older release?): it is not selected until it is updated", client_id, now - since)

    def mark_live(self, client_id: str) -> None:
        """An upload absorbed from ``client_id`` (it echoed the round's nonce): proof of life like a live status."""
        self._live[client_id] = (time.monotonic(), self.challenge)

    def selectable(self) -> list[str]:
        """Online clients with a fresh proof of life (see the module's docstring)."""
        now = time.monotonic()
        return sorted(c for c in self.online if (proof := self._live.get(c)) is not None
                      and now - proof[0] <= self.liveness and proof[1] in self._nonces)
