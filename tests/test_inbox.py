"""The link's inbox holds at most its byte budget and never makes paho's network thread wait; the link's flow
control (acknowledge on take, MQTT 5 Receive Maximum) makes the broker wait instead, and nothing is lost."""

from __future__ import annotations

import threading

import pytest

from sensors.inbox import Inbox
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from wait_support import wait_for


def test_inbox_is_bounded_in_bytes_and_in_messages_and_keeps_order():
    box: Inbox[str] = Inbox(max_items=10, max_bytes=100)
    assert box.offer("a", 60) and not box.offer("b", 60)  # over the byte budget
    assert box.offer("c", 40) and box.bytes == 100
    assert box.get(0) == "a" and box.offer("b", 60)
    assert [box.get(0), box.get(0), box.get(0)] == ["c", "b", None]
    assert box.offer("huge", 1000)  # larger than the budget: admitted alone, or it could never arrive
    assert not box.offer("x", 1) and box.get(0) == "huge"
    few: Inbox[int] = Inbox(max_items=2, max_bytes=10**6)
    assert few.offer(1, 1) and few.offer(2, 1) and not few.offer(3, 1)


def test_a_waiting_get_wakes_when_an_item_is_offered():
    box: Inbox[str] = Inbox(max_items=10, max_bytes=10)
    got = []
    t = threading.Thread(target=lambda: got.append(box.get(timeout=10)))
    t.start()
    assert box.offer("first", 5)
    t.join(10)
    assert got == ["first"]


@pytest.mark.broker
def test_a_slow_reader_holds_at_most_its_byte_budget_and_gets_every_message(mosquitto):
    size, count, budget = 100 * 1024, 40, 300 * 1024
    opts = LinkOptions(client_id="slow", reconnect_min=1, reconnect_max=2, inbox_bytes=budget)
    with MqttLink(mosquitto.url, opts, None, ["t/data"]).connect() as reader, \
            MqttLink(mosquitto.url, LinkOptions(client_id="pub")).connect() as pub:
        assert reader.v5 and reader.receive_maximum == 1  # 300 KiB holds one of the protocol's largest messages
        sender = threading.Thread(target=lambda: pub.publish_all(
            [("t/data", i.to_bytes(4, "big") * (size // 4)) for i in range(count)], timeout=60))
        sender.start()
        wait_for(lambda: reader.pending >= 1, 30, "the first message in the unread inbox")
        got = []
        peak = 0
        while len(got) < count:
            peak = max(peak, reader._inbox.bytes)
            m = reader.get(timeout=10)
            assert m is not None, f"only {len(got)} of {count} arrived"
            got.append(int.from_bytes(m.payload[:4], "big"))
        sender.join(30)
        assert got == list(range(count)) and peak <= budget and reader.dropped == 0


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_full_inbox_never_stops_the_network_thread(mosquitto, protocol, caplog):
    """Nobody reads the inbox: the link still answers the broker (its own publication is acknowledged, no
    reconnect), where a network thread waiting for room used to stop keepalive and every PUBACK. On MQTT 5 the
    broker stops at the Receive Maximum (mosquitto 2.0.11 may send a whole window more after a PUBACK: measured);
    mosquitto's 3.1.1 window (20) is wider than this inbox (5). Whatever overflows is dropped, counted, logged."""
    count, room = 30, 5
    opts = LinkOptions(client_id=f"full-{protocol}", inbox=room, protocol=protocol, reconnect_min=1, reconnect_max=2)
    got: list[int] = []

    def accounted() -> bool:  # every message read, in order, or counted as dropped
        m = reader.get(timeout=0.1)
        if m is not None:
            got.append(int.from_bytes(m.payload, "big"))
        return len(got) + reader.dropped == count

    with MqttLink(mosquitto.url, opts, None, ["t/flood"]).connect() as reader, \
            MqttLink(mosquitto.url, LinkOptions(client_id="flooder")).connect() as pub:
        pub.publish_all([("t/flood", i.to_bytes(4, "big")) for i in range(count)], timeout=30)
        if protocol == "5":
            assert reader.receive_maximum == room
            wait_for(lambda: reader.pending == room, 30, "the unread inbox to fill")
        else:
            wait_for(lambda: reader.pending + reader.dropped == count, 30, "every message kept or dropped",
                     detail=lambda: f"{reader.pending} kept, {reader.dropped} dropped")
            assert reader.pending == room and reader.dropped == count - room
        reader.publish_all([("t/alive", b"1")], timeout=15)  # its PUBACK is read by the same network thread
        wait_for(accounted, 30, "every message read or counted as dropped", every=0,
                 detail=lambda: f"{len(got)} read, {reader.dropped} dropped")
        assert reader.connected and reader.connects == 1
    assert got[:room] == list(range(room)) and got == sorted(set(got))
    if reader.dropped:
        assert any("inbox full" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
