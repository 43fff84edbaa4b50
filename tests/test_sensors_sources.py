"""Live sources with real transports (pty serial port, UDP socket, mosquitto, pipe) and malformed input."""

from __future__ import annotations

import json
import os
import pty
import socket
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.datasets import load_dataset
from sensors.recording import SampleBatch
from sensors.sources import (
    LineParser,
    MqttSource,
    ReplaySource,
    SampleBuffer,
    SerialSource,
    SourceStats,
    StdinSource,
    StreamFormat,
    UdpSource,
)
from wait_support import wait_for

FMT = StreamFormat({"acce": 3, "gyro": 2}, label=True)
GOOD = [b"0.00,1,2,3,4,5,0", b"0.02,1.5,2,3,4,5,1", b"0.04,-1,2e-3,3,4,5,-1"]
BAD = {  # line -> reason it is filed under
    b"\xff\xfe\x00garbage": "decode",
    b"0.06,1,2,3,4,0": "columns",
    b"0.06,1,2,3,4,5,6,7,0": "columns",
    b"0.06,1,two,3,4,5,0": "parse",
    b"0.06,nan,2,3,4,5,0": "non_finite",
    b"0.06,1,2,inf,4,5,0": "non_finite",
    b"0.04,1,2,3,4,5,0": "duplicate_timestamp",
    b"0.01,1,2,3,4,5,0": "non_monotonic",
}


def _collect(source, n: int, timeout: float = 10.0) -> SampleBatch:
    got, deadline = [], time.monotonic() + timeout
    while sum(len(b) for b in got) < n and time.monotonic() < deadline:
        b = source.get(timeout=0.2)
        if b is not None:
            got.append(b)
    assert got, "no samples arrived"
    return SampleBatch.concat(got)




def _check_good(batch: SampleBatch) -> None:
    np.testing.assert_allclose(batch.timestamps, [0.0, 0.02, 0.04])
    np.testing.assert_array_equal(batch.modalities["acce"][2], np.float32([-1, 2e-3, 3]))
    np.testing.assert_array_equal(batch.modalities["gyro"][:, 1], [5, 5, 5])
    assert batch.labels.tolist() == [0, 1, -1]
    assert batch.modalities["acce"].dtype == np.float32


def test_parser_counts_every_kind_of_malformed_line():
    stats = SourceStats()
    parser = LineParser(FMT, "dev", stats)
    out = [parser.feed(line) for line in GOOD + list(BAD)]
    assert all(b is not None for b in out[:3]) and all(b is None for b in out[3:])
    assert stats.accepted == 3
    expected: dict[str, int] = {}
    for reason in BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(stats.rejected) == expected


def test_parser_json_lines():
    stats = SourceStats()
    parser = LineParser(StreamFormat({"acce": 3, "gyro": 2}, codec="json"), "dev", stats)
    ok = parser.feed('{"t": 1.5, "acce": [1, 2, 3], "gyro": [4, 5], "label": 2}')
    assert ok.labels.tolist() == [2] and ok.modalities["gyro"].tolist() == [[4, 5]]
    for line in ('{"t": 2, "acce": [1, 2], "gyro": [4, 5]}', '{"t": 2, "acce": [1, 2, NaN], "gyro": [4, 5]}',
                 '[1, 2]', '{"acce": [1, 2, 3]}', '{"t": "x", "acce": [1,2,3], "gyro": [4,5]}', '{"t": 3, "acc'):
        assert parser.feed(line) is None
    assert stats.accepted == 1 and sum(stats.rejected.values()) == 6
    assert stats.rejected["columns"] == 1 and stats.rejected["json"] == 3


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_parser_never_raises_on_arbitrary_input(line):
    stats = SourceStats()
    for codec in ("csv", "json"):
        LineParser(StreamFormat({"a": 2}, codec=codec), "x", stats).feed(line)
    blank = not line.strip()
    assert stats.accepted + sum(stats.rejected.values()) == (0 if blank else 2)


def _batch(t0: int, n: int, unit: str = "u") -> SampleBatch:
    t = np.arange(t0, t0 + n, dtype=np.float64)
    return SampleBatch(t, {"a": t[:, None].astype(np.float32)}, np.full(n, -1), unit)


def test_buffer_drops_oldest_and_counts():
    buf = SampleBuffer(capacity=10)
    for i in range(4):
        buf.put(_batch(i * 4, 4))
    assert len(buf) == 10 and buf.dropped == 6
    out = buf.get(100, timeout=0)
    assert out.timestamps.tolist() == list(range(6, 16))


def test_buffer_get_stops_at_unit_boundary_and_block_policy_waits():
    buf = SampleBuffer(capacity=8, policy="block")
    buf.put(_batch(0, 3, "a"))
    buf.put(_batch(3, 3, "b"))
    assert buf.put(_batch(6, 3, "b"), timeout=0.05) == 2  # fills to the sample; the producer holds the rest
    assert buf.put(_batch(8, 1, "b"), timeout=0.05) == 0  # full: the producer waits, nothing dropped
    assert buf.get(100, timeout=0).unit == "a"
    assert buf.put(_batch(8, 1, "b"), timeout=0.05) == 1
    b = buf.get(100, timeout=0)
    assert b.unit == "b" and b.timestamps.tolist() == [3, 4, 5, 6, 7, 8] and buf.dropped == 0


def test_replay_as_fast_as_possible_is_exact():
    recs = load_dataset("demo")[:2]
    recs = [type(r)(r.dataset, r.unit, r.subject, r.rate_hz, {m: x[:1000] for m, x in r.modalities.items()},
                    r.labels[:1000], r.timestamps[:1000], r.label_names) for r in recs]
    with ReplaySource(recs, speed=None, batch_size=128, buffer_size=256) as src:
        batches = list(src)
    assert [b.unit for b in batches][0] == recs[0].unit and batches[-1].unit == recs[1].unit
    for rec in recs:
        got = SampleBatch.concat([b for b in batches if b.unit == rec.unit])
        np.testing.assert_array_equal(got.modalities["gyro"], rec.modalities["gyro"])
        np.testing.assert_array_equal(got.labels, rec.labels)
    assert src.dropped == 0 and src.stats.accepted == 2000


def test_replay_keeps_pace():
    rec = load_dataset("demo")[0]
    rec = type(rec)(rec.dataset, rec.unit, rec.subject, rec.rate_hz, {m: x[:50] for m, x in rec.modalities.items()},
                    rec.labels[:50], rec.timestamps[:50], rec.label_names)  # 1 s of data
    start = time.monotonic()
    with ReplaySource(rec, speed=10.0) as src:
        n = sum(len(b) for b in src)
    assert n == 50
    assert time.monotonic() - start >= 0.08  # 0.98 s of data at ×10 cannot arrive sooner


def test_serial_source_over_a_pty_with_garbage_and_unplug():
    master, slave = pty.openpty()
    src = SerialSource(os.ttyname(slave), FMT, retry_s=0.1).start()
    try:
        # bytes sent before the gateway opens the port are lost anyway
        wait_for(lambda: src.port is not None, 30, "the source to open its port")
        payload = b"\r\n".join(GOOD[:2]) + b"\r\n\x00\x9f\xff garbage\n" + GOOD[2] + b"\n" + b"\n".join(BAD) + b"\n"
        for i in range(0, len(payload), 7):  # arrives in arbitrary pieces, like a real UART
            os.write(master, payload[i : i + 7])
        batch = _collect(src, 3)
        _check_good(batch)
        wait_for(lambda: sum(src.stats.rejected.values()) >= len(BAD) + 1, 30, "every bad line to be rejected")
        os.close(master)  # unplug
        os.close(slave)
        wait_for(lambda: src.stats.rejected["disconnected"] >= 1, 30, "the disconnect to be counted")
        assert src._thread.is_alive()  # keeps retrying instead of crashing
    finally:
        src.close()
    assert not src._thread.is_alive()


def test_serial_source_accepts_pyserial_urls():
    src = SerialSource("loop://", FMT).start()  # pyserial's loopback: what is written is read back
    try:
        wait_for(lambda: src.port is not None, 30, "the source to open its port")
        src.port.write(b"\n".join(GOOD) + b"\n")
        _check_good(_collect(src, 3))
    finally:
        src.close()


def test_serial_source_missing_port_is_counted_not_raised():
    src = SerialSource("/dev/fedmekt-no-such-port", FMT, retry_s=0.05).start()
    wait_for(lambda: src.stats.rejected["disconnected"] >= 2, 30, "the second disconnect to be counted")
    src.close()


def test_udp_source_csv_datagrams():
    with UdpSource(FMT) as src, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(GOOD[0], ("127.0.0.1", src.port))
        tx.sendto(b"\n".join(GOOD[1:]) + b"\n", ("127.0.0.1", src.port))  # several lines in one datagram
        for line in BAD:
            tx.sendto(line, ("127.0.0.1", src.port))
        tx.sendto(bytes(range(128, 256)) * 2, ("127.0.0.1", src.port))  # invalid UTF-8, no newline
        batch = _collect(src, 3)
        _check_good(batch)
        wait_for(lambda: sum(src.stats.rejected.values()) >= len(BAD) + 1, 30, "every bad line to be rejected")
        assert src.stats.accepted == 3 and sum(src.stats.rejected.values()) == len(BAD) + 1


@pytest.mark.broker
def test_mqtt_source_wildcard_topics_and_broker_restart(mosquitto):
    fmt = StreamFormat({"acce": 3, "gyro": 2}, codec="json")
    src = MqttSource(fmt, "sensors/+/raw", port=mosquitto.port, retry_s=0.1).start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        wait_for(lambda: src.connected, 30, "the source to connect")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()

        def send(dev, t):
            msg = json.dumps({"t": t, "acce": [t, 2, 3], "gyro": [4, 5]})
            pub.publish(f"sensors/{dev}/raw", msg, qos=1).wait_for_publish(5)

        for t in (0.0, 0.1, 0.2):
            send("wrist", t)
            send("ankle", t)  # same times on another device: not duplicates, separate unit
        pub.publish("sensors/wrist/raw", b"\xde\xad\xbe\xef", qos=1).wait_for_publish(5)
        stale = json.dumps({"t": 0.1, "acce": [1, 2, 3], "gyro": [4, 5]})  # older than the last wrist sample
        pub.publish("sensors/wrist/raw", stale, qos=1).wait_for_publish(5)
        got = _collect(src, 6)
        assert {got.unit} <= {"sensors/wrist/raw", "sensors/ankle/raw"}
        wait_for(lambda: src.stats.accepted == 6 and sum(src.stats.rejected.values()) == 2, 30,
                 "6 samples accepted and 2 rejected")
        assert src.stats.rejected["non_monotonic"] == 1 and src.stats.rejected["decode"] == 1

        mosquitto.kill()  # broker crash: counted, then paho reconnects by itself
        wait_for(lambda: src.stats.rejected["disconnected"] >= 1, 30, "the disconnect to be counted")
        mosquitto.restart()
        wait_for(lambda: src.connected, 30, "the source to reconnect")
        pub.loop_stop()
        pub.reconnect()
        pub.loop_start()
        send("wrist", 0.3)
        wait_for(lambda: src.stats.accepted == 7, 30, "the 7th sample to be accepted")
    finally:
        pub.loop_stop()
        src.close()


@pytest.mark.broker
def test_mqtt_source_flood_with_a_slow_consumer_keeps_the_link_up(mosquitto, caplog):
    """Nobody reads (``block`` buffer of 40 samples) while 400 messages arrive: paho's network thread never waits,
    so the inbox refuses what does not fit (counted and logged) and keepalive goes on: pings (every 2 s) are
    answered after the inbox filled and the connection is never lost. The samples kept come out in order."""
    count, room, inbox = 400, 40, 20
    fmt = StreamFormat({"acce": 3, "gyro": 2})
    src = MqttSource(fmt, "sensors/flood", port=mosquitto.port, keepalive=2, inbox=inbox, buffer_size=room,
                     policy="block", batch_size=1000, retry_s=0.1)
    pongs: list[float] = []
    src.client.on_log = lambda c, u, level, buf: buf.startswith("Received PINGRESP") and pongs.append(time.monotonic())
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    src.start()
    try:
        assert src.subscribed.wait(30), "the source's subscription was not acknowledged"
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        infos = [pub.publish("sensors/flood", f"{i / 100:.2f},1,2,3,4,5", qos=1) for i in range(count)]
        for info in infos:
            info.wait_for_publish(30)
        held = wait_for(lambda: src.stats.accepted + len(src.inbox) + src.dropped_messages == count and
                        len(src.inbox) == inbox and time.monotonic(), 30, "every message parsed, queued or dropped",
                        detail=lambda: f"{src.stats.accepted} parsed, {len(src.inbox)} queued, "
                                       f"{src.dropped_messages} dropped")
        assert src.dropped_messages == count - room - 1 - inbox  # the reader holds one batch, waiting for room
        wait_for(lambda: sum(p > held for p in pongs) >= 2, 30, "two keepalive pings answered after the inbox filled")
        assert src.connected and src.stats.rejected["disconnected"] == 0
        assert any("mqtt:sensors/flood inbox full" in r.getMessage() and "dropped" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        kept = _collect(src, room + 1 + inbox, timeout=30)
        assert len(kept) == room + 1 + inbox
        times = np.round(kept.timestamps * 100).astype(int).tolist()
        # in order, from the first (which of the rest were dropped depends on how fast the reader kept up)
        assert times[0] == 0 and times == sorted(set(times)), times
        pub.publish("sensors/flood", f"{count / 100:.2f},1,2,3,4,5", qos=1).wait_for_publish(30)
        late = _collect(src, 1, timeout=30)  # still subscribed on the same connection
        assert late.timestamps.tolist() == [count / 100] and src.stats.rejected["disconnected"] == 0
    finally:
        pub.loop_stop()
        src.close()


def test_stdin_source_under_block_waits_for_a_slow_consumer_and_loses_nothing():
    """A pipe under the "block" policy: the reader waits for room however long the consumer takes (the pipe, not a
    silent drop, holds the rest); it used to give up on a batch after 1 s of a full buffer without counting it."""
    n, r, w = 400, *os.pipe()

    def writer():
        with os.fdopen(w, "wb") as fh:
            for i in range(n):   # one write per line: many small batches
                fh.write(f"{i * 0.02:.2f},1,2,3,4,5,0\n".encode())
                fh.flush()

    threading.Thread(target=writer, daemon=True).start()
    with os.fdopen(r, "rb") as stream:
        src = StdinSource(FMT, stream=stream, buffer_size=16, policy="block").start()
        try:
            wait_for(lambda: len(src.buffer) == 16, 30, "the reader to fill the 16-sample buffer")
            time.sleep(2.0)   # the slow consumer: longer than the reader's old 1 s give-up, not a synchronisation
            got = _collect(src, n, timeout=60)
        finally:
            src.close()
    assert len(got) == n and src.dropped == 0, (len(got), src.dropped)
    np.testing.assert_allclose(got.timestamps, np.arange(n) * 0.02)


def test_stdin_source_reads_a_pipe_until_eof():
    r, w = os.pipe()

    def writer():
        with os.fdopen(w, "wb") as fh:
            fh.write(GOOD[0] + b"\n" + b"\x80\x81\n" + GOOD[1] + b"\n")
            fh.flush()
            fh.write(GOOD[2])  # last line without newline, then EOF

    threading.Thread(target=writer).start()
    with os.fdopen(r, "rb") as stream:
        src = StdinSource(FMT, stream=stream)
        batch = SampleBatch.concat(list(src))
    _check_good(batch)
    assert src.stats.rejected["decode"] == 1
