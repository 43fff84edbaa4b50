"""SQLite store: bit-exact round trip, unit segments, exact retention, restart and SIGKILL mid-write."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sensors.recording import SampleBatch
from sensors.store import SampleStore, StoreError
from sensors.windowing import window_starts

REPO = Path(__file__).resolve().parents[1]


def _batch(start: int, n: int, unit: str = "wrist") -> SampleBatch:
    """Sample i carries i in acce[:, 0] and t = i / 50, so any loss or reordering shows."""
    i = np.arange(start, start + n)
    rng = np.random.default_rng(start)
    acce = rng.standard_normal((n, 3)).astype(np.float32)
    acce[:, 0] = i
    gyro = rng.standard_normal((n, 2)).astype(np.float32) * np.float32(1e-39)  # subnormals survive too
    return SampleBatch(i / 50.0, {"acce": acce, "gyro": gyro}, (i % 7 - 1).astype(np.int64), unit)


def test_round_trip_is_bit_exact_and_keeps_units(tmp_path):
    batches = [_batch(0, 100, "wrist"), _batch(100, 50, "wrist"), _batch(150, 30, "ankle"), _batch(180, 20, "wrist")]
    with SampleStore(tmp_path / "s.db") as store:
        for b in batches:
            store.append(b)
        part = store.read_partition()
        assert store.count() == len(part) == 200
        assert store.units() == ["wrist", "ankle"]
        ts = store.timestamps()
    want = SampleBatch.concat([SampleBatch(b.timestamps, b.modalities, b.labels, "x") for b in batches])
    for m in ("acce", "gyro"):
        assert part.modalities[m].dtype == np.float32
        assert part.modalities[m].tobytes() == want.modalities[m].tobytes()
    np.testing.assert_array_equal(part.labels, want.labels)
    np.testing.assert_array_equal(ts, want.timestamps)
    assert part.segments.tolist() == [[0, 150], [150, 180], [180, 200]]
    assert part.units == ("wrist", "ankle", "wrist")
    starts = window_starts(part, 40, 10)
    assert not ((starts < 150) & (starts + 40 > 150)).any() and not ((starts >= 150) & (starts < 180)).any()


def test_subset_of_modalities_and_time_gaps(tmp_path):
    with SampleStore(tmp_path / "s.db") as store:
        store.append(_batch(0, 10))
        store.append(_batch(500, 10))  # 9.8 s later: the device was off
        only = store.read_partition(["gyro"])
        assert set(only.modalities) == {"gyro"} and only.segments.tolist() == [[0, 20]]
        assert store.read_partition(max_gap_s=1.0).segments.tolist() == [[0, 10], [10, 20]]
        with pytest.raises(ValueError):
            store.read_partition(["depth"])
        with pytest.raises(ValueError):
            store.append(SampleBatch(np.zeros(1), {"acce": np.zeros((1, 4), np.float32)}, np.zeros(1, np.int64)))


def test_retention_drops_exactly_the_oldest_and_survives_restart(tmp_path):
    path = tmp_path / "s.db"
    with SampleStore(path, max_samples=1000) as store:
        for k in range(37):
            store.append(_batch(64 * k, 64))
        assert store.count() == 1000 and store.dropped == 37 * 64 - 1000
        part = store.read_partition()
    np.testing.assert_array_equal(part.modalities["acce"][:, 0], np.arange(37 * 64 - 1000, 37 * 64))
    with SampleStore(path, max_samples=1000) as store:  # restart
        assert store.count() == 1000
        store.append(_batch(37 * 64, 10))
        first = store.read_partition().modalities["acce"][0, 0]
        assert store.count() == 1000 and first == 37 * 64 - 990
        assert store.check()


_WRITER = """
import sys, numpy as np
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_sensors_store import _batch
from sensors.store import SampleStore
store = SampleStore({path!r}, max_samples=5000)
k = 0
while True:
    store.append(_batch(100 * k, 100))
    k += 1
    print(k, flush=True)
"""


def test_sigkill_mid_write_leaves_a_consistent_store(tmp_path):
    path = tmp_path / "s.db"
    code = _WRITER.format(repo=str(REPO), tests=str(REPO / "tests"), path=str(path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        written = 0
        while written < 80 and time.monotonic() < deadline:  # past the retention limit: trimming is in play
            line = child.stdout.readline()
            assert line, "writer died"
            written = int(line)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    with SampleStore(path, max_samples=5000) as store:
        assert store.check()
        n = store.count()
        part = store.read_partition()
        assert n == len(part) == 5000  # every committed append is whole; retention held
        idx = part.modalities["acce"][:, 0].astype(np.int64)
        np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + n))  # contiguous, nothing torn
        assert idx[-1] + 1 >= written * 100  # nothing acknowledged before the kill is lost
        store.append(_batch(int(idx[-1]) + 1, 5))  # and it keeps working
        assert store.count() == 5000


def test_garbage_file_is_a_store_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        SampleStore(bad)


def test_store_module_has_no_network_code():
    tree = ast.parse((REPO / "sensors" / "store.py").read_text())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "json", "sqlite3", "threading", "collections", "contextlib", "dataclasses",
                        "functools", "pathlib", "numpy", "sensors"}


def test_empty_store_and_declared_channels(tmp_path):
    with SampleStore(tmp_path / "a.db") as store:
        part = store.read_partition(["acce"])
        assert len(part) == 0 and part.segments.shape == (0, 2)
    with SampleStore(tmp_path / "b.db", channels={"acce": 3, "gyro": 2}) as store:
        part = store.read_partition()
        assert part.modalities["gyro"].shape == (0, 2) and len(part) == 0
        store.append(_batch(0, 5))
    with pytest.raises(StoreError):
        SampleStore(tmp_path / "b.db", channels={"acce": 3})
    with SampleStore(tmp_path / "b.db") as store:
        assert store.channels == {"acce": 3, "gyro": 2} and store.count() == 5
