"""The ``ble:`` source through bleak's ``backend=`` hook with a scripted radio: scan by name and address,
retries with backoff, a refused connection, a malformed notification, a dropped link and the reconnect;
and the ``ble:`` spec of ``fedmekt client --source``."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ble_support import ScriptedWearable, h10_frames, scripted_backends
from edge_client.sources import open_source
from fedmekt.errors import UserError
from sensors.recording import SampleBatch
from sensors.sources.ble import BleSource
from sensors.sources.ble_format import PMD_CONTROL, PMD_DATA, PMD_START_ACC_200HZ, PRESETS
from wait_support import wait_for

H10 = PRESETS["polar-h10-acc"]


def drain(src: BleSource, n: int, timeout: float = 20.0) -> SampleBatch:
    """``n`` samples from the source, or fail naming what arrived."""
    got, deadline = [], time.monotonic() + timeout
    while sum(len(b) for b in got) < n:
        assert time.monotonic() < deadline, f"timed out waiting for {n} samples: got {sum(len(b) for b in got)}, " \
                                            f"stats {src.stats}, {src.counters}"
        b = src.get(timeout=0.2)
        if b is not None:
            got.append(b)
    return SampleBatch.concat(got)


def test_scan_retry_refused_connect_malformed_drop_and_reconnect():
    frames = h10_frames(25)
    truncated = frames[10][:-3]
    wearable = ScriptedWearable(sessions=[frames[:10] + [truncated] + frames[10:15], frames[15:]],
                                hidden_scans=2, refused_connects=1)
    scan_starts: list[float] = []
    scanner, client = scripted_backends(wearable)

    class TimedScanner(scanner):
        async def start(self) -> None:
            scan_starts.append(time.monotonic())
            await super().start()

    src = BleSource(wearable.name, H10, scan_timeout=0.2, retry_s=0.05, backends=(TimedScanner, client)).start()
    try:
        assert wearable.done.wait(30), f"the scripted wearable never finished: {wearable}, {src.stats}"
        assert src.connected.is_set()  # the last session holds the link
        batch = drain(src, 250)
        now = src.now()
    finally:
        src.close()
    assert not src._thread.is_alive()
    # every good sample once, in order: x carries the sample's index in milli-g
    assert np.rint(batch.modalities["acce"][:, 0] * 1000).astype(int).tolist() == list(range(250))
    np.testing.assert_allclose(batch.modalities["acce"][:, 2], 1.0)
    assert np.all(np.diff(batch.timestamps) > 0) and batch.timestamps[-1] <= now
    assert batch.unit == wearable.name and set(np.unique(batch.labels)) == {-1}
    # two empty scans, a refused connection, the dropped link: four disconnections, each retried
    assert src.stats.rejected["disconnected"] == 4 and src.stats.rejected["truncated"] == 1
    assert src.counters.connects == 2 and wearable.connects == 3 and src.stats.accepted == 250
    assert wearable.subscribed == [PMD_DATA] * 2 and wearable.writes == [(PMD_CONTROL, PMD_START_ACC_200HZ)] * 2
    # backoff: each failed attempt waited the scan plus twice the previous delay (lower bounds only)
    gaps = np.diff(scan_starts[:4])
    assert gaps[0] >= 0.2 + 0.05 and gaps[1] >= 0.2 + 0.1 and gaps[2] >= 0.2, gaps


def test_scan_by_address_and_close_during_a_long_scan():
    wearable = ScriptedWearable(sessions=[h10_frames(3)])
    src = BleSource(wearable.address.lower(), H10, backends=scripted_backends(wearable)).start()
    try:
        assert drain(src, 30).timestamps.size == 30
    finally:
        src.close()
    hidden = ScriptedWearable(hidden_scans=10**6)
    src = BleSource(hidden.name, H10, scan_timeout=3600, backends=scripted_backends(hidden)).start()
    wait_for(lambda: hidden.scans, 10, "the source to scan", every=0.01)
    src.close()  # cancels the hour-long scan
    assert not src._thread.is_alive() and src.stats.accepted == 0


def test_a_full_block_buffer_counts_what_the_wearable_sent_beyond_it_as_dropped(monkeypatch):
    """A peripheral cannot be paused: under "block" with no consumer, the buffer keeps the first samples and
    every sample that found no room is counted in ``dropped``, none lost uncounted."""
    monkeypatch.setattr("sensors.sources.ble.PUT_WAIT_S", 0.05)
    wearable = ScriptedWearable(sessions=[h10_frames(10)], interval=0.01)
    src = BleSource(wearable.name, H10, buffer_size=35, policy="block", backends=scripted_backends(wearable)).start()
    try:
        assert wearable.done.wait(30), f"the scripted wearable never finished: {wearable}, {src.stats}"
        wait_for(lambda: len(src.buffer) + src.buffer.dropped == 100, 20,
                 "all 100 samples buffered or counted dropped", every=0.01)
        assert src.stats.accepted == 100 and len(src.buffer) == 35 and src.buffer.dropped == 65
        batch = drain(src, 35)
    finally:
        src.close()
    assert np.rint(batch.modalities["acce"][:, 0] * 1000).astype(int).tolist() == list(range(35))


def test_ble_source_spec(tmp_path):
    by_address = open_source("ble:A0:9E:1A:0A:1B:2C", "gw01", {}, None)
    assert by_address.live and not by_address.normalised
    assert by_address.source.device == "A0:9E:1A:0A:1B:2C" and by_address.source.fmt == H10
    fmt = tmp_path / "band.toml"
    fmt.write_text('characteristics = ["6e400003-b5a3-f393-e0a9-e50e24dcca9e"]\nmodalities = {acce = 3, gyro = 3}\n'
                   'value = "float32"\nsamples = 4\nheader = ["seq:uint16"]\nrate_hz = 100\n')
    by_name = open_source(f"ble:My Band,{fmt}", "gw01", {"acce": 3, "gyro": 3}, None).source
    assert by_name.device == "My Band" and by_name.fmt.samples == 4 and by_name.fmt.has_seq
    for spec, mods, message in [
        ("ble:", {}, "needs a wearable"),
        ("ble:Polar H10 1,polar-h99", {}, "unknown BLE format 'polar-h99'"),
        (f"ble:Band,{tmp_path / 'missing.toml'}", {}, "cannot read BLE format"),
        ("ble:Polar H10 1", {"acce": 3, "gyro": 3}, "disagree with the BLE format"),
    ]:
        with pytest.raises(UserError, match=message):
            open_source(spec, "gw01", mods, None)
    fmt.write_text('preset = "polar-h10-acc"\nrate = 100\n')
    with pytest.raises(UserError, match="unknown key 'rate'"):
        open_source(f"ble:Band,{fmt}", "gw01", {}, None)
