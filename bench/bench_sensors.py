"""Sensors benchmark: load + window all of HAPT, and sustained streaming ingest into the SQLite store.

Pinned to one CPU core (and one BLAS thread) so the figures say what a single gateway core does.
Run: .venv/bin/python bench/bench_sensors.py [--samples 300000]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fedmekt.errors import UserError  # noqa: E402
from sensors.datasets import load_dataset  # noqa: E402
from sensors.partition import Partition  # noqa: E402
from sensors.recording import SampleBatch  # noqa: E402
from sensors.sources import ReplaySource, StreamFormat, UdpSource  # noqa: E402
from sensors.splits import make_split  # noqa: E402
from sensors.store import SampleStore  # noqa: E402
from sensors.windowing import gather_windows, window_starts  # noqa: E402

LOAD_GOAL_S = 5.0
INGEST_GOAL = 20_000.0
WINDOW, STRIDE = 128, 64  # UCI HAR's 2.56 s windows with 50 % overlap


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"core {core}"
    return "not pinned (no sched_setaffinity)"


def load_and_window(name: str) -> tuple[float, int, int]:
    """Seconds to read every recording and materialise all windows of both modalities."""
    t0 = time.perf_counter()
    recs = load_dataset(name)
    lengths = np.array([len(r) for r in recs])
    stops = np.cumsum(lengths)
    part = Partition({m: np.concatenate([r.modalities[m] for r in recs]) for m in ("acce", "gyro")},
                     np.concatenate([r.labels for r in recs]), np.stack([stops - lengths, stops], 1))
    starts = window_starts(part, WINDOW, STRIDE)
    windows = {m: gather_windows(x, starts, WINDOW) for m, x in part.modalities.items()}
    labels = gather_windows(part.labels, starts, WINDOW)
    elapsed = time.perf_counter() - t0
    assert windows["acce"].shape == (len(starts), WINDOW, 3) and labels.shape[0] == len(starts)
    return elapsed, len(part), len(starts)


def split_seconds(name: str) -> float:
    recs = load_dataset(name)
    t0 = time.perf_counter()
    make_split(recs, ("acce", "gyro"), seed=0)
    return time.perf_counter() - t0


def ingest(name: str, samples: int, durable: bool, via_source: bool) -> float:
    """Samples/s appended to a fresh store (retention on), fed by a ReplaySource or directly."""
    recs = load_dataset(name)
    with tempfile.TemporaryDirectory() as tmp:
        store = SampleStore(Path(tmp) / "bench.db", max_samples=samples // 2, durable=durable)
        n, t0 = 0, time.perf_counter()
        if via_source:
            with ReplaySource(recs, speed=None, batch_size=256) as src:
                for batch in src:
                    store.append(batch)
                    n += len(batch)
                    if n >= samples:
                        break
        else:
            for rec in recs:
                for a in range(0, len(rec), 256):
                    b = min(a + 256, len(rec))
                    store.append(SampleBatch(rec.timestamps[a:b], {m: x[a:b] for m, x in rec.modalities.items()},
                                             rec.labels[a:b], rec.unit))
                    n += b - a
                    if n >= samples:
                        break
                if n >= samples:
                    break
        elapsed = time.perf_counter() - t0
        assert store.check() and store.count() == min(n, samples // 2)
        store.close()
    return n / elapsed


def ingest_udp_lines(samples: int) -> tuple[float, int]:
    """Samples/s of CSV lines sent over loopback UDP (10 lines per datagram), parsed, stored.

    Sender, reader thread and store share the one core. The sender sends bursts of 100 datagrams
    and waits for the reader to catch up (a sensor cannot outrun real time either), so the figure
    is the sustained rate, not the loss of a flooded socket; returns (rate, samples lost anyway).
    """
    fmt = StreamFormat({"acce": 3, "gyro": 3})
    rng = np.random.default_rng(0)
    vals = rng.standard_normal((samples, 6)).round(5)
    lines = [f"{i / 50:.2f}," + ",".join(f"{v:g}" for v in row) for i, row in enumerate(vals)]
    datagrams = ["\n".join(lines[i : i + 10]).encode() for i in range(0, samples, 10)]
    with tempfile.TemporaryDirectory() as tmp, UdpSource(fmt, buffer_size=samples) as src:
        store = SampleStore(Path(tmp) / "udp.db")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t0 = time.perf_counter()

        def send():
            for k, d in enumerate(datagrams, start=1):
                sender.sendto(d, ("127.0.0.1", src.port))
                if k % 100 == 0:
                    deadline = time.monotonic() + 1.0
                    while src.stats.accepted < 10 * k - 500 and time.monotonic() < deadline:
                        time.sleep(0.0005)

        th = threading.Thread(target=send)
        th.start()
        n, idle = 0, 0
        while n < samples and idle < 5:
            batch = src.get(timeout=0.2)
            if batch is None:
                idle += 1 if not th.is_alive() else 0
                continue
            store.append(batch)
            n += len(batch)
        elapsed = time.perf_counter() - t0
        th.join()
        sender.close()
        assert store.count() == n == src.stats.accepted
        store.close()
    return n / elapsed, samples - n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300_000, help="samples to ingest per measurement")
    args = parser.parse_args()
    where = pin_one_core()
    try:
        name = "hapt"
        load_dataset(name)  # warm the page cache so the figure is about parsing, not the disk
    except UserError:
        name = "demo"
        print("HAPT not found (set FEDMEKT_DATA_DIR); measuring the bundled demo subset instead")
    print(f"sensors benchmark on {where}, dataset {name}")
    secs, rows, n_win = load_and_window(name)
    print(f"load + window all of {name}: {secs:.2f} s for {rows:,} rows -> {n_win:,} windows of {WINDOW}x(3+3) "
          f"| goal < {LOAD_GOAL_S:.0f} s | {LOAD_GOAL_S / secs:.1f}x under goal")
    print(f"make_split paper scheme (30 clients): {split_seconds(name):.2f} s")
    for label, durable, via in (("ReplaySource -> store (synchronous=NORMAL)", False, True),
                                ("direct append   (synchronous=NORMAL)", False, False),
                                ("ReplaySource -> store (durable, synchronous=FULL)", True, True)):
        rate = ingest(name, args.samples, durable, via)
        print(f"ingest {label}: {rate:,.0f} samples/s, batches of 256 | goal >= {INGEST_GOAL:,.0f} | "
              f"{rate / INGEST_GOAL:.1f}x goal")
    rate, lost = ingest_udp_lines(min(args.samples, 100_000))
    print(f"ingest UdpSource CSV lines -> parse -> store: {rate:,.0f} samples/s ({lost:,} lost in the socket) | "
          f"goal >= {INGEST_GOAL:,.0f} | {rate / INGEST_GOAL:.1f}x goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
