"""End to end over a virtual radio: a Bumble wearable (the Polar H10 PMD accelerometer service on a virtual
controller) and the gateway's Bumble host, joined by a ``LocalLink``. The production ``BleSource`` drives the
gateway's host through bleak's ``backend=`` hook: it scans, connects, discovers, subscribes, starts the stream,
survives a dropped link and a malformed frame, and its samples land in the store; the gateway then trains a
round through mosquitto.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ble_support import VirtualAir, bumble_backends, h10_frames
from edge_client.agent import AgentOptions, EdgeAgent
from edge_client.sources import ingest
from sensors.sources.ble import BleSource
from sensors.sources.ble_format import PRESETS
from sensors.store import SampleStore
from wait_support import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
FRAMES, PER_FRAME = 60, 10  # 60 notifications of 10 samples at 200 Hz: 3 s of accelerometer data


def test_bumble_wearable_streams_into_the_store_and_the_gateway_trains_a_round(federation, tmp_path):
    fed = federation(rounds=1, clients=(1, 0, 1), per_round=2)  # c000: the wearable's gateway (acce only)
    frames = h10_frames(FRAMES, PER_FRAME)
    frames.insert(40, b"\x00" + frames[40][1:])  # an ECG-typed frame where ACC belongs: refused, the stream goes on
    air = VirtualAir(frames, interval=PER_FRAME / 200, drop_after=40)  # the bad frame opens the 2nd connection
    source = BleSource(air.name, PRESETS["polar-h10-acc"], retry_s=0.1, backends=bumble_backends(air))
    store = SampleStore(tmp_path / "c000" / "store.sqlite", max_samples=200_000)
    t0 = time.monotonic()
    reader = threading.Thread(target=ingest, args=(source, store), daemon=True)
    reader.start()
    stop = threading.Event()
    agent_thread = None
    try:
        wait_for(lambda: store.count() >= FRAMES * PER_FRAME, 60, f"{FRAMES * PER_FRAME} samples in the store",
                 detail=lambda: f"{store.count()} stored, wearable sent {air.sent}, {source.stats}, {source.counters}")
        stored_s = time.monotonic() - t0
        assert air.sent == FRAMES + 1 and air.drops == 1 and source.counters.connects == 2
        # the dropped link (and any scan a busy machine let time out) was counted, and the one malformed frame
        assert source.stats.rejected["disconnected"] >= 1 and source.stats.rejected["header"] == 1
        assert set(source.stats.rejected) == {"disconnected", "header"} and source.counters.lost == 0

        part = store.read_partition()
        x = part.modalities["acce"]
        assert x.shape == (FRAMES * PER_FRAME, 3) and store.units() == [air.name]
        assert np.rint(x[:, 0] * 1000).astype(int).tolist() == list(range(FRAMES * PER_FRAME))  # in order, once
        ts = store.timestamps()
        assert np.all(np.diff(ts) > 0) and ts[-1] <= source.now()

        fed.start_client("c001")  # the other gateway replays its split partition
        agent = EdgeAgent(fed.url, AgentOptions("c000", fed.federation, store, tmp_path / "c000", normalise=True))
        trained: list[int] = []
        agent_thread = threading.Thread(target=lambda: trained.append(agent.run(stop)), daemon=True)
        agent_thread.start()
        fed.start_aggregator()
        fed.wait_round_done(0, timeout=240)
        row = [r for r in fed.metrics() if r["round"] == 0][-1]
        assert row["selected"] == 2 and row["absorbed"] == 2, row  # the wearable's gateway uploaded its round
        agent_thread.join(120)
        assert not agent_thread.is_alive(), "the gateway did not finish with the run"
        assert trained == [1]
        print(f"\nbumble e2e: advertising->discovered {air.timings['discovered'] - air.timings['advertising']:.2f} s, "
              f"{FRAMES + 1} notifications incl. one dropped link streamed "
              f"{air.timings['sent'] - air.timings['streaming']:.2f} s, in the store after {stored_s:.2f} s, "
              f"round done after {time.monotonic() - t0:.2f} s")
    finally:
        stop.set()
        source.close()
        reader.join(10)
        if agent_thread is not None:
            agent_thread.join(10)
        store.close()
