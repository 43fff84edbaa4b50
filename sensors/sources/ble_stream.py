"""One characteristic's notifications onto the gateway's time line: order, gaps, clock drift.

The gateway's clock is authoritative; the wearable's is not (it may start at 0 on every boot,
run fast or slow, or jump). Each sample gets ``device time + offset``, where ``ClockMap`` tracks
the offset from arrivals: a sample was taken no later than its notification arrived, so the offset
follows the lower envelope of ``arrival - device time`` (the least link latency seen), may rise
only as fast as a crystal drifts (``max_drift``, when the wearable's clock runs slow), and is
re-anchored (``resyncs``) when the mapped time would lie more than ``max_lag`` before arrival (a
rebooted or jumping wearable clock). Mapped times therefore lie in ``[arrival - max_lag, arrival]``.
The store's order stays strict: when the offset falls (less latency seen than before, e.g. a
backlog of notifications that queued up arrives in one burst), the samples of the next notification
that would land at or before the last stored one are moved just past it, 1 µs apart, rather than
restamping what is stored (so a burst is stamped at most 1 µs per sample after its arrival).

Without a device timestamp the wearable's sequence counter (or, lacking that, the count of samples
received) times ``1 / rate_hz`` stands in for its clock, so every stream is mapped the same way.

Order: BLE delivers a link's notifications in order, but a wearable's own buffering may not. Up
to ``reorder`` notifications are held (never longer than ``hold_s`` once the stream pauses: ``release_stale``)
and released in sequence (by counter, else device time);
one that arrives after a newer one was released is ``late``, a repeated counter ``duplicate``
(both counted in ``stats.rejected`` and logged, nothing stored). Counter jumps are ``lost``
notifications (``BleCounters.lost``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

from sensors.recording import UNLABELLED, SampleBatch
from sensors.sources.ble_format import Decoder, Notification, NotificationFormat
from sensors.sources.parse import MalformedSample, SourceStats

log = logging.getLogger("sensors.sources")
_NUDGE = 1e-6  # seconds between samples moved past the last stored one


@dataclass
class ClockMap:
    """The bounded, drift-tracking offset from a wearable's clock to the gateway's (see module doc)."""

    max_lag: float = 2.0      # seconds a sample may be stamped before it reached the gateway
    max_drift: float = 1e-3   # seconds per second the offset may rise (1000 ppm, well above crystal drift)
    offset: float | None = None
    resyncs: int = 0
    _last_arrival: float = -math.inf

    def update(self, device_t: float, arrival: float) -> float:
        """Fold in one (device time, arrival) pair; the offset to add to device times."""
        bound = arrival - device_t  # the sample cannot be later than its arrival
        if self.offset is None:
            self.offset = bound
        elif bound <= self.offset:  # less latency than ever seen, or a wearable clock running fast
            self.offset = bound
        elif bound - self.offset > self.max_lag:  # the wearable's clock jumped back (reboot): re-anchor
            self.offset = bound
            self.resyncs += 1
        else:  # a slow wearable clock: follow, no faster than drift allows
            self.offset += min(bound - self.offset, self.max_drift * max(0.0, arrival - self._last_arrival))
        self._last_arrival = arrival
        return self.offset


@dataclass
class BleCounters:
    """What the link did, next to ``SourceStats``: notifications, losses, connections."""

    notifications: int = 0
    lost: int = 0          # notifications missing by sequence counter
    connects: int = 0
    resyncs: int = 0       # wearable clock jumps the ClockMap re-anchored on


class NotificationStream:
    """Decodes, orders and timestamps one characteristic's notifications; ``feed`` returns samples to store."""

    def __init__(self, fmt: NotificationFormat, unit: str, stats: SourceStats, counters: BleCounters,
                 where: str = "ble") -> None:
        self.fmt, self.unit, self.stats, self.counters, self.where = fmt, unit, stats, counters, where
        self.decoder = Decoder(fmt)
        self.clock = ClockMap()
        self.last_t = -math.inf        # last stored timestamp: the store's order is strict
        self._held: list = []          # heap of (key, arrival order, arrival, timestamps, notification)
        self._arrivals = itertools.count()
        self._last_key: float | None = None
        self._seq_raw: int | None = None   # raw counter of the newest notification of this connection
        self._seq_top: int | None = None   # its unwrapped value
        self._samples_seen = 0         # stands in for the clock when there is neither t nor seq

    def feed(self, payload: bytes, arrival: float) -> SampleBatch | None:
        """One notification that arrived at gateway time ``arrival``; the samples now due, if any."""
        self.counters.notifications += 1
        try:
            note = self.decoder.decode(bytes(payload))
        except MalformedSample as exc:
            self.stats.reject(exc.reason, str(exc), self.where)
            return None
        key = self._key(note)
        ts = self._timestamps(note, key, arrival)
        heapq.heappush(self._held, (key, next(self._arrivals), arrival, ts, note))
        due = []
        while len(self._held) > self.fmt.reorder:
            due.append(heapq.heappop(self._held))
        return self._release(due)

    def release_stale(self, now: float, hold_s: float) -> SampleBatch | None:
        """Everything held once the oldest held notification arrived ``hold_s`` ago (a paused stream)."""
        if self._held and min(entry[2] for entry in self._held) <= now - hold_s:
            return self.flush()
        return None

    def flush(self) -> SampleBatch | None:
        """Release everything held (the link dropped or the source closes)."""
        due = [heapq.heappop(self._held) for _ in range(len(self._held))]
        return self._release(due)

    def restart(self) -> None:
        """A new connection: the wearable may have restarted its counter or clock; the time line goes on."""
        self._seq_raw = None
        if not self.fmt.has_seq:  # device times order notifications within one connection only
            self._last_key = None

    # -- internals ---------------------------------------------------------------------------
    def _key(self, note: Notification) -> float:
        """Where the notification belongs in the stream: unwrapped counter, else device time, else arrival."""
        if note.seq is not None:
            if self._seq_raw is None:  # first of a connection: counted on from the last one (outages are not losses)
                ext = self._seq_top + 1 if self._seq_top is not None else note.seq
            else:  # the shortest step forwards or backwards modulo the counter's range
                m = self.fmt.seq_modulus
                step = (note.seq - self._seq_raw) % m
                ext = self._seq_top + (step - m if step > m // 2 else step)
            if self._seq_raw is None or ext > self._seq_top:
                self._seq_raw, self._seq_top = note.seq, ext
            return float(ext)
        if note.device_t is not None:
            return note.device_t
        return float(self._samples_seen)

    def _timestamps(self, note: Notification, key: float, arrival: float) -> np.ndarray:
        n, period = len(note.values), 1.0 / self.fmt.rate_hz
        if note.device_t is not None:
            first = note.device_t - (n - 1) * period if self.fmt.time_of == "last" else note.device_t
        elif note.seq is not None:
            first = key * (self.fmt.samples or n) * period
        else:
            first = self._samples_seen * period
        self._samples_seen += n
        device = first + np.arange(n) * period
        resyncs = self.clock.resyncs
        offset = self.clock.update(float(device[-1]), arrival)
        self.counters.resyncs += self.clock.resyncs - resyncs
        return device + offset

    def _release(self, due: list) -> SampleBatch | None:
        ts_parts, rows = [], []
        for key, _, _, ts, note in due:
            if self._last_key is not None and key <= self._last_key:
                reason = "duplicate" if key == self._last_key else "late"
                self.stats.reject(reason, f"notification {key:g} after {self._last_key:g}", self.where)
                continue
            if self.fmt.has_seq and self._last_key is not None and key > self._last_key + 1:
                lost = int(key - self._last_key - 1)
                self.counters.lost += lost
                log.warning("%s: %d notification(s) lost before #%d (%d so far)", self.where, lost, int(key),
                            self.counters.lost)
            self._last_key = key
            if ts[0] <= self.last_t:  # the offset fell (less latency seen): keep the store's order strict
                ts = np.maximum(ts, self.last_t + _NUDGE * np.arange(1, len(ts) + 1))
            self.last_t = float(ts[-1])
            ts_parts.append(ts)
            rows.append(note.values)
        if not rows:
            return None
        t = np.concatenate(ts_parts)
        x = np.concatenate(rows)
        self.stats.accepted += len(t)
        mods, at = {}, 0
        for m, c in self.fmt.modalities.items():
            mods[m] = x[:, at: at + c]
            at += c
        return SampleBatch(t.astype(np.float64), mods, np.full(len(t), UNLABELLED, np.int64), self.unit)
