"""On-device sample store: SQLite in WAL mode, bounded retention, crash-safe, read back bit-exact.

Samples are stored in chunks (one row per appended ``SampleBatch``) whose arrays are raw
little-endian blobs — float64 timestamps, int64 labels, the modalities' float32 rows — so
ingest costs one INSERT per batch instead of one per sample, and reading returns exactly the
float32 values that were written.

Durability: every ``append`` is one transaction. In WAL mode a crash or power loss never corrupts
the database; with ``durable=False`` (``synchronous=NORMAL``, the default) the last transactions
before a power cut may be missing, with ``durable=True`` (``FULL``) every returned ``append`` is on
disk. Retention: beyond ``max_samples`` the oldest samples are dropped (exactly, trimming the oldest
chunk if needed). This module has no network code: raw samples never leave the device through it.

Reading: ``read_partition`` loads everything; a training round uses ``open_partition`` instead, a snapshot
whose arrays read only the rows indexed (its random crops), so a round's memory does not grow with the store.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from sensors.partition import Partition
from sensors.recording import SampleBatch

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    unit    TEXT    NOT NULL,
    n       INTEGER NOT NULL CHECK (n > 0),
    t0      REAL    NOT NULL,
    t1      REAL    NOT NULL,
    ts      BLOB    NOT NULL,
    labels  BLOB    NOT NULL,
    data    BLOB    NOT NULL  -- float32 [n, C_m] of each modality, concatenated in meta 'channels' order
);
"""


class StoreError(RuntimeError):
    """The store file is not usable (schema mismatch, corruption, wrong modalities)."""


class SampleStore:
    """Persistent, bounded FIFO of samples of fixed modalities (channels fixed by the first append).

    Thread-safe: one connection guarded by a lock, so a source thread may append while a
    training thread reads.
    """

    def __init__(self, path: Path | str, max_samples: int | None = None, durable: bool = False,
                 channels: dict[str, int] | None = None) -> None:
        """Open or create the store; ``channels`` fixes the modalities up front (else the first append does)."""
        if max_samples is not None and max_samples < 1:
            raise ValueError("max_samples must be >= 1 or None")
        self.path = Path(path)
        self.max_samples = max_samples
        # Raw sensor data is private: a new folder is 0700 and the database 0600 (SQLite gives its
        # -wal/-shm files the database's mode); an existing database is tightened to 0600.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        self.path.chmod(0o600)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            version = self._meta("schema")
            if version is None:
                self._set_meta("schema", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema {version}, this version reads {SCHEMA_VERSION}")
            stored = self._meta("channels")
            self.channels: dict[str, int] | None = json.loads(stored) if stored else None
            if channels is not None:
                channels = {str(m): int(c) for m, c in channels.items()}
                if self.channels is None:
                    self._set_meta("channels", json.dumps(channels))
                    self.channels = channels
                elif self.channels != channels:
                    raise StoreError(f"{self.path} holds {self.channels}, expected {channels}")
            self._count = int(self._db.execute("SELECT COALESCE(SUM(n), 0) FROM chunks").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable sample store ({exc})") from exc
        self.dropped = 0  # samples removed by retention since this process opened the store

    # -- metadata -----------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- writing ------------------------------------------------------------------------------
    def append(self, batch: SampleBatch) -> None:
        """Persist one batch atomically, then enforce retention."""
        n = len(batch)
        if n == 0:
            return
        ts = np.ascontiguousarray(batch.timestamps, dtype="<f8")
        labels = np.ascontiguousarray(batch.labels, dtype="<i8")
        mods = {m: np.ascontiguousarray(x, dtype="<f4") for m, x in batch.modalities.items()}
        channels = {m: int(x.shape[1]) for m, x in mods.items()}
        if ts.shape != (n,) or labels.shape != (n,) or any(x.shape[0] != n or x.ndim != 2 for x in mods.values()):
            raise ValueError("batch arrays disagree in length")
        with self._lock:
            if self.channels is None:
                self._set_meta("channels", json.dumps(channels))
                self.channels = channels
            elif channels != self.channels:
                raise ValueError(f"store holds {self.channels}, batch has {channels}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO chunks(unit, n, t0, t1, ts, labels, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (batch.unit, n, float(ts[0]), float(ts[-1]), ts.tobytes(), labels.tobytes(),
                     b"".join(mods[m].tobytes() for m in self.channels)),
                )
                self._count += n
                if self.max_samples is not None and self._count > self.max_samples:
                    self._trim(self._count - self.max_samples)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._count = int(self._db.execute("SELECT COALESCE(SUM(n), 0) FROM chunks").fetchone()[0])
                raise

    def _trim(self, excess: int) -> None:
        """Drop the ``excess`` oldest samples (inside the caller's transaction)."""
        for cid, n in self._db.execute("SELECT id, n FROM chunks ORDER BY id").fetchall():
            if excess <= 0:
                break
            if n <= excess:
                self._db.execute("DELETE FROM chunks WHERE id = ?", (cid,))
                k = n
            else:  # keep the newest n - excess rows of this chunk
                ts, labels, data = self._db.execute(
                    "SELECT ts, labels, data FROM chunks WHERE id = ?", (cid,)).fetchone()
                ts = np.frombuffer(ts, "<f8")[excess:]
                kept = b"".join(x[excess:].tobytes() for x in self._split(data, n).values())
                self._db.execute("UPDATE chunks SET n = ?, t0 = ?, ts = ?, labels = ?, data = ? WHERE id = ?",
                                 (n - excess, float(ts[0]), ts.tobytes(), labels[8 * excess :], kept, cid))
                k = excess
            excess -= k
            self._count -= k
            self.dropped += k

    # -- reading ------------------------------------------------------------------------------
    def _split(self, data: bytes, n: int) -> dict[str, np.ndarray]:
        """A chunk's data blob -> {modality: float32 [n, C]} (views into ``data``)."""
        out, at = {}, 0
        for m, c in self.channels.items():
            out[m] = np.frombuffer(data, dtype="<f4", count=n * c, offset=at).reshape(n, c)
            at += 4 * n * c
        return out

    def count(self) -> int:
        """Samples currently stored."""
        return self._count

    def units(self) -> list[str]:
        with self._lock:
            return [u for (u,) in self._db.execute("SELECT unit FROM chunks GROUP BY unit ORDER BY MIN(id)")]

    def read_partition(self, modalities: Sequence[str] | None = None, max_gap_s: float | None = None) -> Partition:
        """Everything stored, oldest first, as a Partition; bit-exact float32 of what was appended.

        A new segment starts where the unit changes or, with ``max_gap_s``, where consecutive
        chunks are further apart in time (e.g. the device was off), so windows never span either.
        """
        with self._lock:
            if self.channels is None:  # nothing ever written and no channels declared
                return _empty(tuple(modalities or ()), {})
            mods = _modalities(modalities, self.channels)
            rows = self._db.execute("SELECT id, unit, n, t0, t1, labels, data FROM chunks ORDER BY id").fetchall()
        index = _ChunkIndex.of(self.path, self.channels,
                               [(r[0], r[1], r[2], r[3], r[4], len(r[5]), len(r[6])) for r in rows], max_gap_s)
        if not rows:
            return _empty(mods, self.channels)
        parts = [self._split(r[6], r[2]) for r in rows]
        data = {m: np.concatenate([p[m] for p in parts]) for m in mods}
        labels = np.frombuffer(b"".join(r[5] for r in rows), dtype="<i8").astype(np.int64)
        return Partition(data, labels, index.segments, index.units)

    @contextmanager
    def open_partition(self, modalities: Sequence[str] | None = None, max_gap_s: float | None = None,
                       transform: Callable[[str, np.ndarray], np.ndarray] | None = None) -> Iterator[Partition]:
        """``read_partition`` without the read: its arrays are ``StoredRows`` that read only the rows indexed.

        A training round indexes its random crops (``sensors.windowing.random_crops``), so what it reads and
        holds is the crops' rows however large the store (the chunk index, 5 numbers a chunk, is the rest).
        The partition is a snapshot (its own SQLite read transaction, WAL): appends and retention while it is
        open are not seen, and the values are bit-identical to ``read_partition``'s at the moment it opened.
        ``transform(modality, rows)`` is applied to every modality's indexed rows (e.g. a ``Normalizer``'s
        ``apply``, elementwise, so the same as applying it to the whole array). Use it inside the ``with``.
        """
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("BEGIN")  # the first SELECT fixes the snapshot every later blob read sees
            meta = db.execute("SELECT value FROM meta WHERE key = 'channels'").fetchone()
            if meta is None:  # nothing ever written and no channels declared
                yield _empty(tuple(modalities or ()), {})
                return
            channels: dict[str, int] = json.loads(meta[0])
            mods = _modalities(modalities, channels)
            rows = db.execute("SELECT id, unit, n, t0, t1, length(labels), length(data) FROM chunks ORDER BY id")
            index = _ChunkIndex.of(self.path, channels, rows.fetchall(), max_gap_s)
            if not len(index.ids):
                yield _empty(mods, channels)
                return
            prefix = np.cumsum([0, *channels.values()])
            at = {m: int(prefix[i]) for i, m in enumerate(channels)}
            data = {m: StoredRows(db, index, "data", np.dtype("<f4"), channels[m], at[m],
                                  None if transform is None else partial(transform, m)) for m in mods}
            labels = StoredRows(db, index, "labels", np.dtype("<i8"), 0, 0, None)
            yield Partition(data, labels, index.segments, index.units)
        finally:
            db.close()

    def timestamps(self) -> np.ndarray:
        """float64 timestamps of every stored sample, oldest first."""
        with self._lock:
            blobs = [r[0] for r in self._db.execute("SELECT ts FROM chunks ORDER BY id")]
        return np.frombuffer(b"".join(blobs), "<f8").copy()

    def check(self) -> bool:
        """SQLite's own integrity check plus a size check of every chunk; True when all is well."""
        with self._lock:
            ok = self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        try:
            self.read_partition()
        except StoreError:
            return False
        return ok

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _modalities(modalities: Sequence[str] | None, channels: dict[str, int]) -> tuple[str, ...]:
    mods = tuple(modalities) if modalities else tuple(channels)
    if set(mods) - set(channels):
        raise ValueError(f"store holds {sorted(channels)}, asked for {sorted(mods)}")
    return mods


def _empty(mods: tuple[str, ...], channels: dict[str, int]) -> Partition:
    return Partition({m: np.zeros((0, channels.get(m, 0)), np.float32) for m in mods}, np.zeros(0, np.int64),
                     np.zeros((0, 2), np.int64), ())


@dataclass(frozen=True)
class _ChunkIndex:
    """Where each stored chunk's rows sit in the concatenated partition, and its segments."""

    ids: np.ndarray     # chunk ids (SQLite rowids), oldest first
    starts: np.ndarray  # first partition row of each chunk; one more entry: the total
    segments: np.ndarray
    units: tuple[str, ...]

    @staticmethod
    def of(path: Path, channels: dict[str, int], rows: list[tuple], max_gap_s: float | None) -> _ChunkIndex:
        """From (id, unit, n, t0, t1, labels bytes, data bytes) rows; a chunk of the wrong size is damage."""
        width = 4 * sum(channels.values())
        for cid, _unit, n, _t0, _t1, n_labels, n_data in rows:
            if n_labels != 8 * n or n_data != width * n:
                raise StoreError(f"{path}: chunk {cid} is damaged (blob sizes do not match n={n})")
        if not rows:
            return _ChunkIndex(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros((0, 2), np.int64), ())
        ns = np.array([r[2] for r in rows], dtype=np.int64)
        starts = np.r_[0, np.cumsum(ns)].astype(np.int64)
        new_seg = [i == 0 or rows[i][1] != rows[i - 1][1]
                   or (max_gap_s is not None and rows[i][3] - rows[i - 1][4] > max_gap_s) for i in range(len(rows))]
        first = np.flatnonzero(new_seg)
        seg_start = starts[first]
        seg_stop = np.r_[seg_start[1:], starts[-1]].astype(np.int64)
        return _ChunkIndex(np.array([r[0] for r in rows], dtype=np.int64), starts,
                           np.stack([seg_start, seg_stop], axis=1).reshape(-1, 2),
                           tuple(rows[i][1] for i in first))


class StoredRows:
    """One modality's float32 rows [N, C] (or the int64 labels [N]) of an ``open_partition`` snapshot.

    Array-like as far as ``sensors.windowing`` needs (``shape``, ``dtype``, ``ndim``, ``len``, integer-array
    indexing ``x[idx]`` -> ndarray ``idx.shape + row shape``): each contiguous run of the rows asked for is
    read with SQLite's incremental blob I/O, so only those bytes are read and held.
    """

    def __init__(self, db: sqlite3.Connection, index: _ChunkIndex, column: str, dtype: np.dtype, channels: int,
                 channel_offset: int, transform: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self._db, self._index, self._column, self._transform = db, index, column, transform
        self.dtype = dtype
        self.shape = (int(index.starts[-1]), channels) if channels else (int(index.starts[-1]),)
        self.ndim = len(self.shape)
        self._row_bytes = dtype.itemsize * max(channels, 1)
        self._offset = dtype.itemsize * channel_offset  # x n rows: where this modality's block starts in a chunk

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError("StoredRows takes integer index arrays")
        flat = idx.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError("a row index lies outside the store's partition")
        rows = np.unique(flat)
        vals = np.empty((rows.size, *self.shape[1:]), self.dtype)
        starts = self._index.starts
        chunk = np.searchsorted(starts, rows, side="right") - 1
        cut = np.flatnonzero((np.diff(rows) != 1) | (np.diff(chunk) != 0)) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, rows.size]):
            k = chunk[a]
            n = int(starts[k + 1] - starts[k])
            with self._db.blobopen("chunks", self._column, int(self._index.ids[k]), readonly=True) as blob:
                blob.seek(self._offset * n + int(rows[a] - starts[k]) * self._row_bytes)
                raw = blob.read(int(b - a) * self._row_bytes)
            vals[a:b] = np.frombuffer(raw, self.dtype).reshape(vals[a:b].shape)
        out = vals[np.searchsorted(rows, flat)].reshape(idx.shape + self.shape[1:])
        out = out.astype(self.dtype.newbyteorder("="), copy=False)
        return out if self._transform is None else self._transform(out)
