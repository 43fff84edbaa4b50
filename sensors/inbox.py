"""An inbox between a network thread and its application: a FIFO bounded in messages and in payload bytes,
with a drop policy that never waits.

paho's network thread fills it and must go on sending keepalive pings (a thread waiting for room stalled the
whole link until the broker dropped it), so ``offer`` never waits: what finds the inbox full is refused,
counted (``dropped``) and logged, one line per ``DROP_LOG_EVERY_S`` at most, never a silent stall. Kept
messages stay in arrival order. A count alone bounds memory only by count x the largest message (2,000 x
256 KiB chunks = 500 MiB); a byte budget keeps a small gateway's inbox at a known size. One message larger
than the whole budget is still let in when the inbox is empty, or it could never be delivered.

It lives in the bottom layer because both MQTT clients of the kit use it: the live sensor source
(sensors.sources.mqtt) and the federation's link (fedmekt.transport.mqtt, whose flow control, acknowledge on
take and MQTT 5 Receive Maximum, keeps what reaches a full inbox rare).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")
DROP_LOG_EVERY_S = 10.0  # an inbox overflowing for a while logs one line per this many seconds


class Inbox(Generic[T]):
    def __init__(self, max_items: int, max_bytes: int, log: logging.Logger | None = None,
                 name: str = "inbox") -> None:
        """``log`` and ``name``: where and as what a drop is reported (the owner's logger and topic)."""
        if max_items < 1 or max_bytes < 1:
            raise ValueError("an inbox needs room for at least one message and one byte")
        self.max_items, self.max_bytes = max_items, max_bytes
        self.log, self.name = log or logging.getLogger(__name__), name
        self.dropped = 0  # messages refused for want of room (counted, logged, lost)
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._drop_logged_at = -DROP_LOG_EVERY_S

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self._bytes + size <= self.max_bytes

    def offer(self, item: T, size: int, where: str = "") -> bool:
        """Append ``item`` of ``size`` bytes if there is room now; if not, count and log the drop (``where``:
        the message's topic, for the log line) and return False."""
        with self._cond:
            if self._fits(size):
                self._items.append((item, size))
                self._bytes += size
                self._cond.notify_all()
                return True
            self.dropped += 1
            now = time.monotonic()
            if now - self._drop_logged_at < DROP_LOG_EVERY_S:
                return False
            self._drop_logged_at = now
            held, held_bytes, dropped = len(self._items), self._bytes, self.dropped
        self.log.warning("%s full (%d messages, %d bytes): dropped %d message(s) so far, the latest on %s; the "
                         "application is not keeping up", self.name, held, held_bytes, dropped, where or "?")
        return False

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout`` s (None = forever); None when nothing came."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                return None
            item, size = self._items.popleft()
            self._bytes -= size
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def bytes(self) -> int:
        """Payload bytes held now."""
        with self._cond:
            return self._bytes
