"""The bounded buffer between a source's reader thread and the consumer (store / training / inference).

Back-pressure policy: the buffer holds at most ``capacity`` samples. ``drop_oldest`` (the default,
for live sensors, which cannot be paused) discards the oldest samples to make room and counts them
in ``dropped`` — fresh data matters more than stale data on a gateway, and memory stays bounded.
``block`` makes the producer wait for room (for replays, where pausing the reader loses nothing).
"""

from __future__ import annotations

import threading
from collections import deque

from sensors.recording import SampleBatch

POLICIES = ("drop_oldest", "block")


class SampleBuffer:
    """Thread-safe FIFO of SampleBatches bounded by the total number of samples."""

    def __init__(self, capacity: int = 65_536, policy: str = "drop_oldest") -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        self.capacity, self.policy = capacity, policy
        self.dropped = 0
        self._chunks: deque[SampleBatch] = deque()
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, batch: SampleBatch, timeout: float | None = None) -> int:
        """Add a batch; returns how many of its samples were taken (from its start).

        ``drop_oldest`` takes them all (an oversized batch keeps its newest part). ``block`` waits up to
        ``timeout`` for room and takes what fits, so a full buffer is full to the sample while the producer
        holds the rest; 0 if no room came in time or the buffer is closed."""
        if len(batch) == 0:
            return 0
        with self._cond:
            if self.policy == "block":
                if not self._cond.wait_for(lambda: self._closed or self._size < self.capacity, timeout) \
                        or self._closed:
                    return 0
                batch = batch.slice(0, self.capacity - self._size)
            elif self._closed:
                return 0
            taken = len(batch)
            if len(batch) > self.capacity:  # keep the newest part of an oversized batch
                self.dropped += len(batch) - self.capacity
                batch = batch.slice(len(batch) - self.capacity)
            while self._size + len(batch) > self.capacity:
                self._drop_oldest(self._size + len(batch) - self.capacity)
            self._chunks.append(batch)
            self._size += len(batch)
            self._cond.notify_all()
        return taken

    def count_lost(self, n: int) -> None:
        """Count ``n`` samples a producer gave up on for lack of room (a sensor that cannot be paused) in
        ``dropped``, so that no sample goes missing uncounted."""
        with self._cond:
            self.dropped += n

    def _drop_oldest(self, n: int) -> None:
        head = self._chunks[0]
        if len(head) <= n:
            self._chunks.popleft()
            k = len(head)
        else:
            self._chunks[0] = head.slice(n)
            k = n
        self._size -= k
        self.dropped += k

    def get(self, max_samples: int = 1024, timeout: float | None = 0.5) -> SampleBatch | None:
        """Oldest samples of one unit (≤ max_samples) as one batch; None if nothing came within timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._size > 0 or self._closed, timeout) or self._size == 0:
                return None
            unit = self._chunks[0].unit
            out, n = [], 0
            while self._chunks and n < max_samples and self._chunks[0].unit == unit:
                head = self._chunks[0]
                take = min(len(head), max_samples - n)
                if take == len(head):
                    out.append(self._chunks.popleft())
                else:
                    out.append(head.slice(0, take))
                    self._chunks[0] = head.slice(take)
                n += take
            self._size -= n
            self._cond.notify_all()
        return SampleBatch.concat(out)

    def close(self) -> None:
        """Wake every waiter; later puts are refused, remaining samples can still be read."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
