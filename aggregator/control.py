"""The control-plane guard: our retained control messages, signed, and put back when someone replaces them.

Every retained control message (manifest, announcement, "done") and proxy chunk we publish is remembered;
a live message on one of those topics that is not one of our recent payloads is a forgery or a replay:
clients refuse it, but one that starts later would find nothing else, so ours goes back (at most every 2 s
per topic). After a reconnect everything we hold is published again (what replaced ours meanwhile arrives
flagged retained, which is never taken for a forgery).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from fedmekt.wire.signing import sign

log = logging.getLogger("aggregator")


class ControlPlane:
    """Our retained control messages by topic; ``link`` is set once connected."""

    def __init__(self, signing_key, rounds_topic: str):
        self.signing_key, self.rounds_topic = signing_key, rounds_topic
        self.link = None  # fedmekt.transport.mqtt.MqttLink
        self._control: dict[str, tuple[bytes, float | None]] = {}  # topic -> (our payload, monotonic expiry)
        self._sent: dict[str, deque[bytes]] = {}  # our recent payloads per control topic (their echoes are ours)
        self._restored: dict[str, float] = {}  # topic -> monotonic time we last put our message back

    def __contains__(self, topic: str) -> bool:
        return topic in self._control

    def payload(self, topic: str) -> bytes:
        """Our current (signed) payload on ``topic``."""
        return self._control[topic][0]

    def publish(self, topic: str, payload: bytes, expiry: int | None = None) -> None:
        """A retained control message, signed when a signing key is configured."""
        signed = sign(self.signing_key, topic, payload)
        self.remember(topic, signed, expiry)
        self.link.publish_all([(topic, signed)], retain=True, expiry=expiry)

    def remember(self, topic: str, payload: bytes, expiry: int | None = None) -> None:
        """Our retained message on ``topic``, restored if someone replaces it (:meth:`guard`)."""
        self._sent.setdefault(topic, deque(maxlen=8)).append(payload)
        self._control[topic] = (payload, None if expiry is None else time.monotonic() + expiry)

    def guard(self, topic: str, payload: bytes, round_open: bool) -> None:
        """Another publisher replaced one of our retained control messages or proxy chunks: put ours back, at
        most every 2 s per topic (clients refuse the forgery, but one that starts later would find nothing else)."""
        ours, expires = self._control[topic]
        if payload in self._sent[topic] or time.monotonic() - self._restored.get(topic, -math.inf) < 2.0 \
                or (topic == self.rounds_topic and not round_open):  # between rounds ours is stale too
            return
        left = None if expires is None else int(expires - time.monotonic())
        if left is not None and left < 1:
            return
        log.warning("retained %s was replaced by another publisher; restoring ours", topic)
        self._restored[topic] = time.monotonic()
        self.link.publish_all([(topic, ours)], retain=True, expiry=left)

    def reassert(self, round_open: bool, extra: list[tuple[str, bytes]]) -> None:
        """Publish again, retained, every control message and proxy chunk we hold, and ``extra`` (the newest
        package's messages: a mixed fleet's, of every class)."""
        now, lasting, expiring = time.monotonic(), [], []
        for topic, (payload, expires) in self._control.items():
            if topic == self.rounds_topic and not round_open and expires is not None:
                continue  # a closed round's announcement: stale between rounds
            if expires is None:
                lasting.append((topic, payload))
            elif expires - now >= 1:
                expiring.append((topic, payload, int(expires - now)))
        lasting += extra
        log.info("reconnected to the broker: re-asserting %d retained messages", len(lasting) + len(expiring))
        try:
            self.link.publish_all(lasting, retain=True)
            for topic, payload, left in expiring:
                self.link.publish_all([(topic, payload)], retain=True, expiry=left)
        except TimeoutError:
            log.warning("re-asserted retained messages not acknowledged in time")
