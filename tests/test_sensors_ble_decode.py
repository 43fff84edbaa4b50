"""The BLE notification decoder and stream on byte streams: the Polar H10 PMD accelerometer frame byte by
byte, malformed and truncated notifications, sequence gaps, reordering and a drifting wearable clock."""

from __future__ import annotations

import logging
import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ble_support import h10_frame
from sensors.sources.ble_format import PRESETS, Decoder, NotificationFormat, format_from_dict
from sensors.sources.ble_stream import BleCounters, ClockMap, NotificationStream
from sensors.sources.parse import MalformedSample, SourceStats

H10 = PRESETS["polar-h10-acc"]
# One PMD ACC data frame as the PMD specification lays it out: type 02, timestamp 0x0000_0123_4567_89AB ns of the
# last sample, frame type 01, then two samples x, y, z int16 LE in milli-g: (1000, -2000, 3), (-1, 0, 32767).
H10_FRAME = bytes.fromhex("02" "ab89674523010000" "01" "e803" "30f8" "0300" "ffff" "0000" "ff7f")


def test_polar_h10_frame_decodes_to_g_and_the_last_samples_timestamp():
    note = Decoder(H10).decode(H10_FRAME)
    np.testing.assert_allclose(note.values, [[1.0, -2.0, 0.003], [-0.001, 0.0, 32.767]], rtol=1e-6)
    assert note.values.dtype == np.float32
    assert note.device_t == pytest.approx(0x0123456789AB * 1e-9) and note.seq is None
    assert H10.start[0][1].hex() == "02020001c8000101100002010800"  # start ACC: 200 Hz, 16 bit, 8 g


# payload -> reason: every way a notification can be broken, none of which may raise anything else
MALFORMED = {
    b"": "truncated",                                      # nothing at all
    H10_FRAME[:5]: "truncated",                            # ends inside the timestamp
    H10_FRAME[:10]: "truncated",                           # a header and no sample
    H10_FRAME[:-1]: "truncated",                           # the last sample cut short
    H10_FRAME[:-4]: "truncated",
    b"\x01" + H10_FRAME[1:]: "header",                     # an ECG frame (measurement type 00/01), not ACC
    H10_FRAME[:9] + b"\x81" + H10_FRAME[10:]: "header",    # a compressed (delta) frame: not this format
    H10_FRAME + bytes(600): "length",                      # longer than any ATT value
}


def test_malformed_and_truncated_notifications_are_counted_and_logged_once_each(caplog):
    stats, counters = SourceStats(), BleCounters()
    stream = NotificationStream(replace(H10, reorder=0), "h10", stats, counters)
    with caplog.at_level(logging.WARNING, logger="sensors.sources"):
        out = [stream.feed(p, 100.0 + i) for i, p in enumerate(MALFORMED)]
    assert out == [None] * len(MALFORMED) and stats.accepted == 0
    expected: dict[str, int] = {}
    for reason in MALFORMED.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(stats.rejected) == expected
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(MALFORMED) and all("skipped sample" in line for line in lines)
    good = stream.feed(H10_FRAME, 200.0)  # the stream goes on after the garbage
    assert good is not None and len(good) == 2 and stats.accepted == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_raises_only_malformed_sample(payload):
    for fmt in (H10, NotificationFormat(("c",), {"acce": 3, "gyro": 3}, "float32", samples=2,
                                        header=("seq:uint8", "t:float32"), byte_order="big")):
        try:
            note = Decoder(fmt).decode(payload)
        except MalformedSample:
            continue
        assert note.values.shape[1] == fmt.channels and np.isfinite(note.values).all()


def test_configurable_format_axes_scale_seq_and_fixed_sample_count():
    fmt = NotificationFormat(("c",), {"acce": 3, "gyro": 3}, "int16", scale=0.5, axes=(2, 1, 0, 3, 4, 5), samples=2,
                             header=("aa", "seq:uint16", "t:uint32"), byte_order="big", time_scale=1e-3)
    payload = bytes.fromhex("aa") + struct.pack(">HI", 7, 1500) + struct.pack(">12h", *range(12))
    note = Decoder(fmt).decode(payload)
    assert note.seq == 7 and note.device_t == pytest.approx(1.5)
    np.testing.assert_array_equal(note.values, [[1, 0.5, 0, 1.5, 2, 2.5], [4, 3.5, 3, 4.5, 5, 5.5]])
    with pytest.raises(MalformedSample, match="length"):  # a fixed count: one sample too many is an error
        Decoder(fmt).decode(payload + bytes(12))
    with pytest.raises(MalformedSample, match="non_finite"):
        Decoder(NotificationFormat(("c",), {"a": 1}, "float32")).decode(struct.pack("<f", float("nan")))


@pytest.mark.parametrize("table, message", [
    ({"preset": "polar-h99"}, "unknown BLE preset"),
    ({"preset": "polar-h10-acc", "rate": 100}, "unknown key 'rate'"),
    ({"characteristics": ["c"], "value": "int12"}, "value must be one of"),
    ({"characteristics": ["c"], "axes": [0, 0, 1]}, "axes must be an order"),
    ({"characteristics": ["c"], "header": ["seq:int16"]}, "header field 'seq:int16'"),
    ({"characteristics": ["c"], "header": ["zz"]}, "header field 'zz'"),
    ({"characteristics": ["c"], "rate_hz": 0}, "rate_hz must be"),
    ({"characteristics": ["c"], "start": [{"characteristic": "x"}]}, "start must be a list"),
    ({"characteristics": "c"}, "characteristics must be a list"),
])
def test_bad_format_tables_are_named(table, message):
    with pytest.raises(ValueError, match=message):
        format_from_dict(table)


def test_format_table_overrides_a_preset():
    fmt = format_from_dict({"preset": "polar-h10-acc", "rate_hz": 50, "axes": [1, 0, 2]})
    assert fmt.rate_hz == 50 and fmt.axes == (1, 0, 2) and fmt.header == H10.header


SEQ = NotificationFormat(("c",), {"acce": 1}, "int16", samples=2, header=("seq:uint8",), rate_hz=10.0, reorder=2)


def seq_note(seq: int, v: int) -> bytes:
    return struct.pack("<B2h", seq % 256, v, v)


def test_reordered_notifications_are_put_back_in_sequence_and_gaps_counted():
    stats, counters = SourceStats(), BleCounters()
    stream = NotificationStream(SEQ, "w", stats, counters)
    order = [0, 2, 1, 3, 4, 7, 5, 8, 9, 9, 3]  # 2/1 and 7/5 swapped; 6 never comes; a repeated 9; a very late 3
    batches = [stream.feed(seq_note(s, s), 1000.0 + 0.2 * i) for i, s in enumerate(order)]
    batches.append(stream.flush())
    got = np.concatenate([b.modalities["acce"][::2, 0] for b in batches if b is not None])
    assert got.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert counters.lost == 1 and stats.rejected["duplicate"] == 1 and stats.rejected["late"] == 1
    t = np.concatenate([b.timestamps for b in batches if b is not None])
    assert np.all(np.diff(t) > 0)
    assert t[-1] <= 1000.0 + 0.2 * (len(order) - 1) + 1e-9  # never stamped after it arrived


def test_sequence_counter_wraps_without_a_gap():
    stats, counters = SourceStats(), BleCounters()
    stream = NotificationStream(replace(SEQ, reorder=0), "w", stats, counters)
    for i, s in enumerate(range(250, 262)):
        stream.feed(seq_note(s, s), 10.0 + 0.2 * i)
    assert counters.lost == 0 and stats.accepted == 24 and not stats.rejected


def test_clock_map_tracks_a_drifting_wearable_and_stays_bounded():
    rng = np.random.default_rng(0)
    for drift in (-200e-6, 0.0, 300e-6):  # the wearable's crystal runs slow / exact / fast
        clock = ClockMap()
        errors = []
        for k in range(3000):  # 10 minutes, a notification every 0.2 s
            true_t = 5000.0 + 0.2 * k  # gateway time the last sample was taken
            device_t = 42.0 + (true_t - 5000.0) * (1 + drift)
            arrival = true_t + 0.008 + rng.exponential(0.03)  # link latency: 8 ms and a tail
            offset = clock.update(device_t, arrival)
            assert device_t + offset <= arrival + 1e-9
            errors.append(device_t + offset - true_t)
        tail = np.abs(errors[-500:])
        assert tail.max() < 0.03, (drift, tail.max())  # within the link's latency jitter, not growing
        assert clock.resyncs == 0


def test_clock_map_reanchors_when_the_wearable_clock_jumps_back():
    clock = ClockMap(max_lag=2.0)
    clock.update(1000.0, 50.01)
    offset = clock.update(0.2, 50.22)  # rebooted: its clock restarts near 0
    assert clock.resyncs == 1 and 0.2 + offset == pytest.approx(50.22)


def test_h10_stream_without_sequence_numbers_orders_by_device_time_across_a_reconnect():
    stats, counters = SourceStats(), BleCounters()
    stream = NotificationStream(H10, "h10", stats, counters)
    out = []
    for i in range(8):
        out.append(stream.feed(h10_frame(10**9 + i * 10**7 * 2, [(i, 0, 0), (i, 1, 0)]), 300.0 + 0.01 * i))
    out.append(stream.flush())
    stream.restart()  # the wearable rebooted: its clock starts again at 0
    for i in range(8):
        out.append(stream.feed(h10_frame(5 * 10**6 + i * 10**7, [(100 + i, 0, 0), (100 + i, 1, 0)]), 400.0 + 0.01 * i))
    out.append(stream.flush())
    batch_t = np.concatenate([b.timestamps for b in out if b is not None])
    assert stats.accepted == 32 and not stats.rejected
    assert np.all(np.diff(batch_t) > 0) and batch_t[-1] <= 400.07 + 1e-9 and batch_t[16] > 399.0


def test_bunched_notifications_stay_in_order_and_never_after_their_arrival():
    """A backlog (frames sampled over 0.3 s, queued while the link came up) arrives in one burst, then the
    stream runs in real time: the offset falls frame by frame; nothing is stamped after it arrived."""
    stats, counters = SourceStats(), BleCounters()
    stream = NotificationStream(replace(H10, reorder=0), "h10", stats, counters)
    arrivals = [50.3] * 7 + [50.35, 50.4, 50.45, 50.5]  # frame i is sampled until 50.0 + 0.05 i
    out = []
    for i, arrival in enumerate(arrivals):
        batch = stream.feed(h10_frame(10**9 + (10 * i + 9) * 5 * 10**6, [(10 * i + k, 0, 0) for k in range(10)]),
                            arrival)
        assert batch.timestamps[-1] <= arrival + 1e-4  # at most 1 µs per sample moved past the last stored one
        out.append(batch)
    t = np.concatenate([b.timestamps for b in out])
    assert np.all(np.diff(t) > 0) and stats.accepted == 110
    assert out[-1].timestamps[-1] == pytest.approx(50.5)  # once the backlog is through, back on the arrival line


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.floats(0, 0.5), st.booleans(), st.booleans()), max_size=60))
def test_stream_never_raises_and_keeps_the_store_order(events):
    """Any counters (wrapping, repeated, jumping), arrival gaps, garbage and reconnects: the samples released are
    strictly increasing in time, never stamped before their arrival minus max_lag, and every notification is
    accounted for (stored, rejected, or still held)."""
    stats, counters = SourceStats(), BleCounters()
    stream = NotificationStream(SEQ, "w", stats, counters)
    arrival, last, released = 100.0, -np.inf, 0
    for seq, gap, garbage, reconnect in events:
        arrival += gap
        if reconnect:
            batches = [stream.flush()]
            stream.restart()
        else:
            batches = [stream.feed(b"\x00" if garbage else seq_note(seq, seq), arrival)]
        for b in batches:
            if b is None:
                continue
            assert b.timestamps[0] > last and np.all(np.diff(b.timestamps) > 0)
            assert b.timestamps[-1] <= arrival + 1e-4 and b.timestamps[0] >= arrival - 2.0 - 0.5 * len(events)
            last, released = b.timestamps[-1], released + len(b)
    released += sum(len(b) for b in [stream.flush()] if b is not None)
    assert released == stats.accepted
    assert stats.accepted // 2 + sum(stats.rejected.values()) == counters.notifications
