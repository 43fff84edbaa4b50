"""The MQTT link's inbox: a FIFO bounded in messages and in payload bytes.

A count alone bounds memory only by count x the largest message (2,000 x 256 KiB chunks = 500 MiB);
a byte budget keeps a small gateway's inbox at a known size. ``offer`` never waits: paho's network thread
fills the inbox and must go on sending keepalive pings (a thread waiting for room stalled the whole link
until the broker dropped it). Flow control is the link's (fedmekt.transport.mqtt: acknowledge on take, MQTT
5 Receive Maximum); what finds the inbox full anyway is refused here and counted by the caller. One message
larger than the whole budget is still let in when the inbox is empty, or it could never be delivered.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("an inbox needs room for at least one message and one byte")
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self._bytes + size <= self.max_bytes

    def offer(self, item: T, size: int) -> bool:
        """Append ``item`` of ``size`` bytes if there is room now; False (nothing appended) if not."""
        with self._cond:
            if not self._fits(size):
                return False
            self._items.append((item, size))
            self._bytes += size
            self._cond.notify_all()
            return True

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
