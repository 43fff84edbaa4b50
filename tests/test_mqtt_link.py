"""MqttLink over real brokers: mosquitto (MQTT v5) and the embedded amqtt fallback (3.1.1)."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from fedmekt.transport.broker import AmqttBroker, free_port, start_mosquitto
from fedmekt.errors import UserError
from fedmekt.transport.mqtt import BrokerAddress, LinkOptions, MqttLink, Presence
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import WireLimits, decode_body, encode
from fedmekt.wire.topics import Topics
from wait_support import wait_for

pytestmark = pytest.mark.broker
T = Topics("t")


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request, tmp_path):
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto")
    else:
        b = AmqttBroker()
        yield b
        b.stop()


def _link(url, cid, presence=None, subs=()):
    return MqttLink(url, LinkOptions(client_id=cid, reconnect_min=1, reconnect_max=2), presence, subs).connect()


def _collect_while(link, more, timeout=10.0):
    """Messages for as long as ``more(messages so far)`` holds (what came, once ``timeout`` passed)."""
    out, deadline = [], time.monotonic() + timeout
    while more(out) and time.monotonic() < deadline:
        m = link.get(timeout=0.1)
        if m is not None:
            out.append(m)
    return out


def _collect(link, n, timeout=10.0):
    return _collect_while(link, lambda out: len(out) < n, timeout)


def _collect_until(link, marker: bytes, timeout=10.0):
    """Messages up to the first whose payload holds ``marker``."""
    return _collect_while(link, lambda out: not (out and marker in out[-1].payload), timeout)


def _presence(cid):
    return Presence(T.status(cid), json.dumps({"state": "online", "modalities": ["acce"]}).encode(),
                    json.dumps({"state": "offline"}).encode())


def test_protocol_is_negotiated(broker):
    with _link(broker.url, "p1") as link:
        assert link.protocol == ("3.1.1" if isinstance(broker, AmqttBroker) else "5")


def test_birth_and_last_will_are_retained(broker):
    dev = _link(broker.url, "dev1", presence=_presence("dev1"))
    with _link(broker.url, "watch1", subs=[T.status_all]) as watch:
        [m] = _collect(watch, 1)
        assert m.topic == T.status("dev1") and json.loads(m.payload)["state"] == "online"
        dev.abort()  # crash: the broker publishes the retained Last Will
        # the birth can reach this subscriber twice, as its retained copy and as the live publish it raced with
        states = [json.loads(m.payload)["state"] for m in _collect_until(watch, b'"offline"')]
        assert states[-1:] == ["offline"] and set(states[:-1]) <= {"online"}, states
    with _link(broker.url, "watch2", subs=[T.status_all]) as late:  # retained: a late subscriber sees it too
        [m] = _collect(late, 1)
        assert m.retain and json.loads(m.payload)["state"] == "offline"


def test_clean_close_publishes_offline(broker):
    dev = _link(broker.url, "dev2", presence=_presence("dev2"))
    dev.close()
    with _link(broker.url, "watch3", subs=[T.status("dev2")]) as watch:
        [m] = _collect(watch, 1)
        assert json.loads(m.payload)["state"] == "offline"


def test_chunked_message_reassembles_and_duplicates_are_dropped(broker):
    rng = np.random.default_rng(0)
    tensors = {"acce.z": rng.standard_normal((300, 24, 4), dtype=np.float32),
               "acce.h": rng.standard_normal((300, 24, 32), dtype=np.float32)}
    limits = WireLimits(chunk_size=64 * 1024)
    frames = encode(tensors, federation="t", round_=1, sender="c001", kind="upload", limits=limits)
    assert len(frames) > 10
    with _link(broker.url, "agg", subs=[T.uploads_all]) as agg, _link(broker.url, "c001") as dev:  # subscribed
        items = [(T.upload_chunk("c001", 1, i), f) for i, f in enumerate(frames)]
        dev.publish_all(items + items[:3])  # a re-send of the first chunks, as after a reconnect
        got = _collect(agg, len(items) + 3)
        r = Reassembler(limits)
        done = [c for c in (r.add(m.payload) for m in got) if c is not None]
    assert len(done) == 1 and r.duplicates == 3
    out = decode_body(done[0].header, done[0].body, {k: (v.shape, "float32") for k, v in tensors.items()})
    np.testing.assert_array_equal(out["acce.h"], tensors["acce.h"])


def test_birth_is_republished_after_broker_restart(mosquitto):
    dev = MqttLink(mosquitto.url, LinkOptions(client_id="dev3", reconnect_min=1, reconnect_max=1),
                   _presence("dev3")).connect()
    try:
        mosquitto.restart()  # persistence off: the retained status is gone until the device re-announces
        wait_for(lambda: dev.connects >= 2, 30, "the device to reconnect to the restarted broker")
        with _link(mosquitto.url, "watch4", subs=[T.status("dev3")]) as watch:
            [m] = _collect(watch, 1)
            assert json.loads(m.payload)["state"] == "online"
    finally:
        dev.close()


def test_message_expiry_drops_stale_retained_plans_on_v5(mosquitto):
    kept = T.status("marker")  # retained without expiry, published with the plan: it stays
    with _link(mosquitto.url, "agg2") as agg:
        agg.publish_all([(T.rounds, b"stale")], retain=True, expiry=1)
        agg.publish_all([(kept, b"kept")], retain=True)

    def late_subscriber_sees() -> list[bytes]:
        """What a new subscriber gets retained: the plan's filter first, so the marker's arrival proves that
        whatever the broker still held for the plan came before it."""
        with _link(mosquitto.url, "late", subs=[T.rounds, kept]) as late:
            got = []
            while not got or got[-1] != b"kept":
                msg = late.get(timeout=10)
                assert msg is not None, f"the retained marker never came (got {got})"
                got.append(msg.payload)
            return got

    wait_for(lambda: late_subscriber_sees() == [b"kept"], 30, "the retained plan to expire", every=0.5)


def test_bad_urls_and_unreachable_brokers_are_user_errors():
    with pytest.raises(UserError):
        BrokerAddress.parse("http://x:1")
    assert BrokerAddress.parse("mqtts://u:p%40ss@h").port == 8883
    assert BrokerAddress.parse("mqtts://u:p%40ss@h").password == "p@ss"
    with pytest.raises(UserError, match="cannot reach"):
        MqttLink(f"mqtt://127.0.0.1:{free_port()}", LinkOptions(client_id="x")).connect(timeout=1.5)


def test_mosquitto_moves_to_a_fresh_port_when_its_pick_is_taken_before_it_binds(monkeypatch):
    """free_port picks from the ephemeral range, so an outgoing connection may bind the port first (a CI run
    lost a broker that way): mosquitto exits on the clash and starts again on a fresh port."""
    from fedmekt.transport import broker as broker_module

    with socket.socket() as taken:  # bound, not listening: connecting to it is refused, binding it fails
        taken.bind(("127.0.0.1", 0))
        picks = iter([taken.getsockname()[1]])
        pick_free = broker_module.free_port
        monkeypatch.setattr(broker_module, "free_port", lambda: next(picks, None) or pick_free())
        broker = start_mosquitto()
        try:
            assert broker.port != taken.getsockname()[1]
            _link(broker.url, "after-clash").close()
        finally:
            broker.stop()


def test_a_started_or_restarted_mosquitto_survives_an_immediate_reload(mosquitto):
    """mosquitto opens its listeners before it installs its signal handlers, and a SIGHUP in between killed a
    CI run's broker: start_mosquitto and restart return only once SIGHUP is handled."""
    for start in (lambda: None, mosquitto.restart):
        start()
        mosquitto.reload()
        _link(mosquitto.url, "after-reload").close()
        assert mosquitto.process.poll() is None


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_takeover_by_a_second_session_of_one_client_id_ends_the_first(mosquitto, protocol):
    """The session token works without MQTT 5 reason codes, and a broker restart is not a takeover."""
    def link():
        return MqttLink(mosquitto.url, LinkOptions(client_id="agg-takeover", reconnect_min=1, reconnect_max=1,
                                                   protocol=protocol, session_topic=T.aggregator_session)).connect()

    def reconnected() -> bool:
        first.get(timeout=0.1)
        return first.connects >= 2

    first = link()
    mosquitto.restart()  # the first reconnects to an empty broker: still its own session
    wait_for(reconnected, 30, "the first session to reconnect to the restarted broker", every=0)
    second = link()
    with pytest.raises(UserError, match="took over"):
        wait_for(lambda: first.get(timeout=0.1) and False, 30, "the first session to see the takeover", every=0)
    assert second.wait_connected(5)
    assert second.get(timeout=1.5) is None and second.connected  # the second is left alone
    first.close()
    second.close()


def test_failover_list_parses_strictly():
    assert [str(a) for a in BrokerAddress.parse_list("mqtt://a:1, mqtt://b:2")] == ["a:1", "b:2"]
    for bad in ("mqtt://a:1,", "mqtt://a:1,,mqtt://b:2", "mqtt://a:1,http://b:2", "mqtt://a:1,mqtt://b:x"):
        with pytest.raises(UserError):
            BrokerAddress.parse_list(bad)


def test_failover_to_the_next_broker_keeps_subscriptions_and_presence(tmp_path):
    """The first broker dies mid-session: the link moves to the second, re-subscribes and re-announces."""
    first, second = (start_mosquitto(workdir=tmp_path / name) for name in ("first", "second"))
    try:
        dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: the first connect already skips it
        urls = f"{dead},{first.url},{second.url}"
        link = MqttLink(urls, LinkOptions(client_id="dev-fo", reconnect_min=1, reconnect_max=1),
                        _presence("dev-fo"), [T.rounds]).connect()
        try:
            assert link.address.port == first.port
            with _link(first.url, "pub1") as pub:
                pub.publish_all([(T.rounds, b"before")])
            assert [m.payload for m in _collect(link, 1)] == [b"before"]
            first.kill()
            wait_for(lambda: link.connected and link.address.port == second.port, 30, "failover to the second broker")
            assert link.connects == 2
            with _link(second.url, "watch-fo", subs=[T.status("dev-fo")]) as watch:
                [m] = _collect(watch, 1)  # the birth message was published on the second broker too
                assert json.loads(m.payload)["state"] == "online"
            with _link(second.url, "pub2") as pub:
                pub.publish_all([(T.rounds, b"after")])
            assert [m.payload for m in _collect(link, 1)] == [b"after"]
        finally:
            link.close()
    finally:
        first.stop()
        second.stop()


def test_failover_list_unreachable_names_every_broker():
    urls = f"mqtt://127.0.0.1:{free_port()},mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=r"cannot reach MQTT broker at 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+"):
        MqttLink(urls, LinkOptions(client_id="x2", reconnect_min=1, reconnect_max=1)).connect(timeout=2)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_live_subscriptions_take_no_retained_messages(mosquitto, protocol):
    """A device login parks retained messages on upload topics; a subscriber that starts later takes none of them
    on its live subscription (MQTT 5: the broker never sends them; 3.1.1: discarded on arrival, counted), and
    the live upload after them still comes."""
    parked = 50
    with _link(mosquitto.url, "parker") as dev:
        dev.publish_all([(T.upload_chunk("evil", i, 0), bytes(1000)) for i in range(parked)], retain=True)
    opts = LinkOptions(client_id=f"agg-live-{protocol}", protocol=protocol, reconnect_min=1, reconnect_max=2)
    with MqttLink(mosquitto.url, opts, None, live=[T.uploads_all]).connect() as agg:
        with _link(mosquitto.url, "honest") as dev:
            dev.publish_all([(T.upload_chunk("good", 0, 0), b"live")])
        m = agg.get(timeout=10)  # after every retained copy the broker would send: they precede it on the wire
        assert m is not None and (m.topic, m.payload, m.retain) == (T.upload_chunk("good", 0, 0), b"live", False)
        assert agg.pending == 0 and agg.retained_refused == (parked if protocol == "3.1.1" else 0)
