"""Replay recorded data as a live stream: real-time pace, ×N faster, or as fast as possible."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from sensors.recording import Recording, SampleBatch
from sensors.sources.base import Source


class ReplaySource(Source):
    """Streams recordings in order, one unit after another, with their own timestamps.

    ``speed`` 1.0 = real time, 10 = ten times faster, ``None``/``inf`` = as fast as the consumer
    takes it. Rows are pushed in chunks of ``chunk_s`` seconds of recording so pacing costs
    no per-sample sleeps. Replays default to the ``block`` policy: nothing is dropped, the
    replay simply waits for the consumer.
    """

    name = "replay"

    def __init__(self, recordings: Recording | Sequence[Recording], speed: float | None = 1.0,
                 modalities: Sequence[str] | None = None, chunk_s: float = 0.05, policy: str = "block", **kw) -> None:
        super().__init__(unit="replay", policy=policy, **kw)
        self.recordings = [recordings] if isinstance(recordings, Recording) else list(recordings)
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0 (or None for as fast as possible)")
        self.speed = math.inf if speed is None else float(speed)
        self.modalities = tuple(modalities) if modalities else tuple(self.recordings[0].modalities)
        self.chunk_s = chunk_s

    def _run(self) -> None:
        for rec in self.recordings:
            t = rec.timestamps
            step = self.batch_size if math.isinf(self.speed) else max(1, int(round(self.chunk_s * rec.rate_hz)))
            wall0, t0 = time.monotonic(), t[0] if len(t) else 0.0
            for a in range(0, len(rec), step):
                if not math.isinf(self.speed):
                    delay = wall0 + (t[a] - t0) / self.speed - time.monotonic()
                    if delay > 0 and self._wait(delay):
                        return
                b = min(a + step, len(rec))
                batch = SampleBatch(t[a:b], {m: rec.modalities[m][a:b] for m in self.modalities},
                                    np.asarray(rec.labels[a:b], dtype=np.int64), rec.unit)
                if not self._put(batch):
                    return
                self.stats.accepted += b - a
