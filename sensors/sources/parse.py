"""Turning untrusted lines from a device into validated samples, counting everything rejected.

Line formats (one sample per line, UTF-8, ``\\n`` terminated):

* CSV: ``t,<channels of modality 1>,<channels of modality 2>,…[,label]`` in the order of
  ``StreamFormat.modalities``; ``t`` in seconds (``time_scale=1e-3`` for a microcontroller's millis()).
* JSON: ``{"t": 12.34, "acce": [x, y, z], "gyro": [x, y, z], "label": 3}`` (label optional).

A sample is rejected — counted under a reason and logged (rate-limited) — when it is not valid
UTF-8, has the wrong number of fields, a field that is not a number, NaN/Inf, or a timestamp that
is not strictly greater than the previous accepted one (``duplicate_timestamp`` / ``non_monotonic``).
Nothing a device sends can raise out of the parser.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sensors.recording import UNLABELLED, SampleBatch

log = logging.getLogger("sensors.sources")
MAX_LINE = 4096  # bytes; longer "lines" are garbage (or a missing newline) and are discarded
_LOG_FIRST = 5   # log the first few rejections of each reason, then every _LOG_EVERY-th


class MalformedSample(ValueError):
    """A line that is not a valid sample; ``reason`` is the counter it is filed under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamFormat:
    """What one line carries: modalities with their channel counts, an optional label, the time unit."""

    modalities: dict[str, int]
    codec: str = "csv"          # "csv" or "json"
    label: bool = False         # CSV: a trailing integer label column
    time_scale: float = 1.0     # multiply the device timestamp by this to get seconds

    def __post_init__(self) -> None:
        if self.codec not in ("csv", "json"):
            raise ValueError("codec must be 'csv' or 'json'")
        if not self.modalities or any(int(c) < 1 for c in self.modalities.values()):
            raise ValueError("modalities must map names to channel counts >= 1")

    @property
    def n_fields(self) -> int:
        return 1 + sum(self.modalities.values()) + int(self.label)


@dataclass
class SourceStats:
    """Counters every source keeps; ``rejected`` by reason. Read them, never reset them mid-run."""

    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)

    def reject(self, reason: str, detail: str, where: str) -> None:
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= _LOG_FIRST or n % 1000 == 0:
            log.warning("%s: skipped sample (%s, %d so far): %s", where, reason, n, detail[:120])


class LineParser:
    """Parses lines of one stream into SampleBatches; keeps the last accepted timestamp of the stream."""

    def __init__(self, fmt: StreamFormat, unit: str, stats: SourceStats, where: str = "source") -> None:
        self.fmt, self.unit, self.stats, self.where = fmt, unit, stats, where
        self.last_t = -math.inf
        self._n_values = sum(fmt.modalities.values())

    def feed(self, line: bytes | str) -> SampleBatch | None:
        """Validate one line; return its one-row batch or None (rejection counted and logged)."""
        return self.feed_many([line])

    def feed_many(self, lines) -> SampleBatch | None:
        """Validate lines in order; one batch of the accepted ones (None if none was accepted).

        Values are checked with plain Python floats and turned into arrays once per call, which
        keeps a Pi-class core well above sensor rates.
        """
        ts: list[float] = []
        rows: list[list[float]] = []
        labels: list[int] = []
        for line in lines:
            if not line.strip():  # blank lines (\r\n\r\n, trailing newline) carry nothing: not an error
                continue
            try:
                t, values, label = self._parse(line)
                if not t > self.last_t:
                    raise MalformedSample("duplicate_timestamp" if t == self.last_t else "non_monotonic",
                                          f"t={t} after {self.last_t}")
            except MalformedSample as exc:
                self.stats.reject(exc.reason, str(exc), self.where)
                continue
            self.last_t = t
            ts.append(t)
            rows.append(values)
            labels.append(label)
        if not ts:
            return None
        self.stats.accepted += len(ts)
        x = np.array(rows, dtype=np.float32).reshape(len(ts), self._n_values)
        mods, at = {}, 0
        for m, c in self.fmt.modalities.items():
            mods[m] = x[:, at : at + c]
            at += c
        return SampleBatch(np.array(ts, dtype=np.float64), mods, np.array(labels, dtype=np.int64), self.unit)

    def _parse(self, line: bytes | str) -> tuple[float, list[float], int]:
        if isinstance(line, bytes):
            if len(line) > MAX_LINE:
                raise MalformedSample("overlong", f"{len(line)} bytes")
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedSample("decode", repr(line[:40])) from exc
        line = line.strip()
        return self._csv(line) if self.fmt.codec == "csv" else self._json(line)

    def _csv(self, line: str) -> tuple[float, list[float], int]:
        parts = line.split(",")
        if len(parts) != self.fmt.n_fields:
            raise MalformedSample("columns", f"{len(parts)} fields, expected {self.fmt.n_fields}: {line[:60]}")
        try:
            values = [float(p) for p in parts[: 1 + self._n_values]]
            label = int(parts[-1]) if self.fmt.label else UNLABELLED
        except ValueError as exc:
            raise MalformedSample("parse", line[:60]) from exc
        if not all(map(math.isfinite, values)):
            raise MalformedSample("non_finite", line[:60])
        return values[0] * self.fmt.time_scale, values[1:], max(label, UNLABELLED)

    def _json(self, line: str) -> tuple[float, list[float], int]:
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise MalformedSample("json", line[:60]) from exc
        if not isinstance(obj, dict) or "t" not in obj:
            raise MalformedSample("json", "expected an object with 't'")
        values: list[float] = []
        try:
            t = float(obj["t"])
            for m, c in self.fmt.modalities.items():
                x = obj[m]
                if not isinstance(x, list) or len(x) != c:
                    raise MalformedSample("columns", f"{m} should be a list of {c} numbers")
                values += [float(v) for v in x]
            label = int(obj.get("label", UNLABELLED))
        except MalformedSample:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise MalformedSample("parse", line[:60]) from exc
        if not math.isfinite(t) or not all(map(math.isfinite, values)):
            raise MalformedSample("non_finite", line[:60])
        return t * self.fmt.time_scale, values, max(label, UNLABELLED)


class LineSplitter:
    """Reassembles ``\\n``-terminated lines from arbitrary byte chunks (serial reads, stdin)."""

    def __init__(self, stats: SourceStats, where: str) -> None:
        self._buf = bytearray()
        self.stats, self.where = stats, where

    def push(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        if len(self._buf) > MAX_LINE:  # a torrent of bytes without newline: drop it
            self.stats.reject("overlong", f"{len(self._buf)} bytes without newline", self.where)
            self._buf.clear()
        return [bytes(line) for line in lines]
