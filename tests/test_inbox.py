"""The link's inbox holds at most its byte budget; a full one makes the broker wait, and nothing is lost."""

from __future__ import annotations

import threading

import pytest

from fedmekt.transport.inbox import Inbox
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from wait_support import wait_for


def test_inbox_is_bounded_in_bytes_and_in_messages_and_keeps_order():
    box: Inbox[str] = Inbox(max_items=10, max_bytes=100)
    assert box.put("a", 60, timeout=0) and not box.put("b", 60, timeout=0.05)  # over the byte budget
    assert box.put("c", 40, timeout=0) and box.bytes == 100
    assert box.get(0) == "a" and box.put("b", 60, timeout=0)
    assert [box.get(0), box.get(0), box.get(0)] == ["c", "b", None]
    assert box.put("huge", 1000, timeout=0)  # larger than the budget: admitted alone, or it could never arrive
    assert not box.put("x", 1, timeout=0) and box.get(0) == "huge"
    few: Inbox[int] = Inbox(max_items=2, max_bytes=10**6)
    assert few.put(1, 1, 0) and few.put(2, 1, 0) and not few.put(3, 1, 0)


def test_a_waiting_put_goes_in_once_a_get_makes_room():
    box: Inbox[str] = Inbox(max_items=10, max_bytes=10)
    box.put("first", 10, timeout=0)
    done = []
    t = threading.Thread(target=lambda: done.append(box.put("second", 10, timeout=5)))
    t.start()
    wait_for(lambda: box.waited == 1, 10, "the second put to wait for room")
    assert not done and box.get(0) == "first"
    t.join(5)
    assert done == [True] and box.get(0) == "second"


@pytest.mark.broker
def test_a_slow_reader_holds_at_most_its_byte_budget_and_gets_every_message(mosquitto):
    size, count, budget = 100 * 1024, 40, 300 * 1024
    opts = LinkOptions(client_id="slow", reconnect_min=1, reconnect_max=2, inbox_bytes=budget)
    with MqttLink(mosquitto.url, opts, None, ["t/data"]).connect() as reader, \
            MqttLink(mosquitto.url, LinkOptions(client_id="pub")).connect() as pub:
        sender = threading.Thread(target=lambda: pub.publish_all(
            [("t/data", i.to_bytes(4, "big") * (size // 4)) for i in range(count)], timeout=60))
        sender.start()
        peak = 0

        def full() -> bool:  # nobody reads: the inbox fills to its budget and stops there
            nonlocal peak
            peak = max(peak, reader._inbox.bytes)
            return peak > budget - size and reader._inbox.waited  # and the next message waits for room

        wait_for(full, 30, "the unread inbox to fill to its byte budget", every=0.02, detail=lambda: f"peak {peak}")
        assert budget - size < peak <= budget
        got = []
        while len(got) < count:
            m = reader.get(timeout=10)
            assert m is not None, f"only {len(got)} of {count} arrived"
            got.append(int.from_bytes(m.payload[:4], "big"))
            peak = max(peak, reader._inbox.bytes)
        sender.join(30)
        assert got == list(range(count)) and peak <= budget
