"""When a client sends its sync request (fedmekt/wire/sync.py) and how it reads the answer.

After every (re)connect the client asks the aggregator for what it lacks. On a broker that keeps
retained messages it first lets their copies arrive (it asks once no manifest, proxy or package
frame has come for ``GRACE`` seconds), so the request names what they brought and the answer is
usually empty; on a broker without them (its CONNACK says so) it asks at once. A client that still
lacks its proxy set, or the global knowledge of a round it is selected for (an answer or a message lost
on the way), asks again every ``RETRY`` seconds while nothing arrives. One that has heard nothing at all and still follows no run (or finished its run's last round
and its end has not come) asks again after ``DEAF`` seconds
(doubling up to ``DEAF_MAX``) and subscribes afresh first: a cluster node can acknowledge a
subscription and then deliver nothing on it (NATS 2.9 under load, deploy/nats/README.md), and where the
aggregator has simply not started yet the cost is one request now and then. Answers come on
``clients/<id>/reply/<topic>`` and are handled as if they came on ``<topic>``: same checks, same
signatures.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from fedmekt.transport.mqtt import Message, MqttLink
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics

log = logging.getLogger("edge_client")
GRACE = 1.0
RETRY = 10.0
DEAF = 20.0
DEAF_MAX = 600.0


def model_held(models) -> tuple[str, int] | None:
    """(run, round) of the package in service of an edge_client.inference.ModelService; None without one."""
    if models is None:
        return None
    recognizer = models.recognizer
    if recognizer is None:
        return ("", -1)
    return (recognizer.package.manifest.run, recognizer.package.manifest.round)


def model_class(models) -> str:
    """The device class whose packages an edge_client.inference.ModelService installs ("" = none declared)."""
    return "" if models is None else models.device_class


class SyncClient:
    """Call :meth:`step` from the client's loop and pass every message through :meth:`unwrap`."""

    def __init__(self, topics: Topics, client_id: str, request: Callable[[], SyncRequest],
                 lacking: Callable[[], bool] = lambda: False, unserved: Callable[[], bool] = lambda: False):
        """``lacking``: it follows a run but lacks its proxy set or a selected round's knowledge;
        ``unserved``: nothing is on its way to it (it follows no run yet, or awaits the end of one it finished)."""
        self.topics, self.client_id, self.request = topics, client_id, request
        self.lacking, self.unserved = lacking, unserved
        self._births = 0  # the link's births already answered with a request
        self._due = math.inf  # monotonic time from which a request is to be sent
        self._last_frame = -math.inf  # the latest manifest, proxy or package frame (retained copies arriving)
        self._sent = -math.inf
        self._heard = -math.inf  # the latest message of any kind
        self._deaf_wait = DEAF
        self.sent = 0

    @property
    def subscription(self) -> str:
        return self.topics.replies(self.client_id)

    def unwrap(self, msg: Message) -> Message:
        """A reply stands for a message on the federation topic it copies; anything else passes unchanged."""
        self._heard, self._deaf_wait = time.monotonic(), DEAF
        topic = self.topics.replied(self.client_id, msg.topic)
        if topic is None:
            if msg.topic.startswith(self.topics.prefix + "/proxy/") or msg.topic.startswith(self.topics.prefix +
                                                                                              "/models/"):
                self._last_frame = time.monotonic()
            return msg
        self._last_frame = time.monotonic()
        return Message(topic, msg.payload, False, msg.received)

    def ask_now(self) -> None:
        """Send a request at the next step: what the client lacks is known not to be on the way."""
        self._due = min(self._due, time.monotonic())

    def step(self, link: MqttLink) -> None:
        now = time.monotonic()
        if link.births != self._births:
            self._births = link.births
            self._due = now
        elif self._due == math.inf and self.lacking() and now - max(self._sent, self._last_frame) >= RETRY:
            self._due = now
        elif self._due == math.inf and now - max(self._sent, self._heard) >= self._deaf_wait and self.unserved() \
                and link.connected:
            log.info("%s: nothing heard for %.0f s; subscribing afresh and asking the aggregator again",
                     self.client_id, now - max(self._sent, self._heard))
            link.resubscribe()
            self._deaf_wait, self._due = min(2 * self._deaf_wait, DEAF_MAX), now
        waited = not link.retain_available or now - max(self._due, self._last_frame) >= GRACE
        if now >= self._due and waited and link.connected:
            self._due, self._sent = math.inf, now
            self.sent += 1
            link.publish(self.topics.sync(self.client_id), self.request().to_bytes())
