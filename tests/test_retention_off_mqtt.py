"""A federation through a mosquitto with retained messages off (``retain_available false``).

Such a broker refuses every retained publication (it drops the connection) and keeps nothing for a
client that subscribes later, as a clustered broker's other nodes or a broker restarted without
persistence do. The protocol's state must then come from sync requests the aggregator answers.
"""

from __future__ import annotations

import time

import pytest

from core_support import tiny_config, tiny_split
from fedmekt.broker import start_mosquitto
from fedmekt.errors import UserError
from fedmekt.federation import run_inprocess
from fedmekt.mqtt import LinkOptions, MqttLink
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics
from fedmekt_cli.simulation import run_simulation
from test_federation_mqtt import _learning

pytestmark = pytest.mark.broker


@pytest.fixture
def no_retain(tmp_path):
    broker = start_mosquitto(extra_config="retain_available false", workdir=tmp_path / "mosquitto")
    yield broker
    broker.stop()


def test_retention_off_link_publishes_without_the_retain_flag(no_retain):
    topics = Topics("t")
    with MqttLink(no_retain.url, LinkOptions(client_id="probe")).connect() as link:
        assert not link.retain_available
        link.publish_all([(topics.rounds, b"x")], retain=True, timeout=5)  # mosquitto would drop a retained one
        assert link.connected and link.connects == 1


def test_no_retain_flag_lets_a_311_link_use_a_broker_that_cannot_say_it_keeps_nothing(no_retain):
    """Under MQTT 3.1.1 a broker cannot announce that retention is off, and mosquitto drops a connection that
    publishes a retained message: ``--no-retain`` is the operator's way to say so."""
    import argparse

    from fedmekt_cli.broker_args import add_broker_args, link_options

    parser = argparse.ArgumentParser()
    add_broker_args(parser, required=True)
    topics = Topics("t")
    for flags, survives in ((["--no-retain"], True), ([], False)):
        args = parser.parse_args(["--broker", no_retain.url, "--mqtt-protocol", "3.1.1", "--inbox-mib", "8", *flags])
        opts = link_options(args, "probe311")
        assert opts.inbox_bytes == 8 * 2**20 and opts.retain is not survives
        with MqttLink(no_retain.url, opts).connect() as link:
            assert link.protocol == "3.1.1"
            try:
                link.publish_all([(topics.rounds, b"x")], retain=True, timeout=3)
            except (TimeoutError, UserError):
                pass
            time.sleep(0.5)
            assert (link.connects == 1 and link.connected) is survives, (flags, link.connects)


def _simulate(cfg, split, url, tmp_path, **kw):
    return run_simulation(cfg, split, url=url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                          workdir=tmp_path / "devices", round_timeout=60, **kw)


def test_retention_off_federation_equals_inprocess(no_retain, tmp_path):
    cfg, split = tiny_config("fedmekt-c", clients=(1, 1, 1), per_round=3), tiny_split(clients=(1, 1, 1))
    sim = _simulate(cfg, split, no_retain.url, tmp_path)
    ref = run_inprocess(cfg, split, progress=False)
    assert [r["absorbed"] for r in sim.result.rows] == [3, 3]
    assert [_learning(r) for r in sim.result.rows] == [_learning(r) for r in ref.rows]
    assert "retain" not in no_retain.log.lower()  # no connection dropped for a retained publication


def test_retention_off_late_client_gets_everything_and_uploads(no_retain, tmp_path):
    """The 4th client connects once round 0 runs, after the manifest and proxy set went out: with nothing
    retained, only the aggregator's sync answers give it the manifest, the proxy set and the rounds."""
    cfg, split = tiny_config("fedmekt-c", clients=(1, 1, 2), per_round=4, rounds=3), tiny_split(clients=(1, 1, 2))

    def before(rnd, agg):
        if rnd == 1:
            agg.wait_for_clients(4, timeout=30)

    rows = _simulate(cfg, split, no_retain.url, tmp_path, late_clients=("c003",), before_round=before).result.rows
    assert [(r["selected"], r["absorbed"]) for r in rows] == [(3, 3), (4, 4), (4, 4)]


def test_retention_off_sync_flood_gets_the_proxy_set_once(no_retain, tmp_path):
    """A client asking 30 times in a row is answered at most once per interval, the proxy set once."""
    import threading

    from aggregator.service import Aggregator, AggregatorOptions

    cfg, split = tiny_config("fedmekt-c", rounds=1, per_round=1), tiny_split()
    agg = Aggregator(cfg, split, no_retain.url, AggregatorOptions(out=tmp_path / "agg", wait_timeout=6,
                                                                   progress=False, sync_interval=0.5))
    topics = Topics(cfg.federation)
    thread = threading.Thread(target=lambda: pytest.raises(UserError, agg.run), daemon=True)  # nobody comes
    thread.start()
    assert agg.published.wait(30)
    with MqttLink(no_retain.url, LinkOptions(client_id="c000"), subscriptions=[topics.replies("c000")]).connect() \
            as flooder:
        request = SyncRequest().to_bytes()  # holds nothing
        for _ in range(30):
            flooder.publish(topics.sync("c000"), request)
            time.sleep(0.05)
        got, deadline = [], time.monotonic() + 3
        while time.monotonic() < deadline:
            msg = flooder.get(timeout=0.2)
            if msg is not None:
                got.append(topics.replied("c000", msg.topic))
    proxy_chunks = sum(1 for t in got if t and t.startswith(topics.prefix + "/proxy/") and t != topics.proxy_manifest)
    manifests = got.count(topics.proxy_manifest)
    assert proxy_chunks == len(agg.proxy_frames) >= 1  # the bulky part once, not 30 times
    assert 1 <= manifests <= 4  # 1.5 s of requests at one answer per 0.5 s
    thread.join(15)


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"v": 2}', b'{"v":1,"run":"x","proxy":"ZZ","round":0,"uploaded":0}',
                                 b'{"v":1,"run":"","proxy":"","round":true,"uploaded":-1,"model":null}',
                                 b'{"v":1,"run":"","proxy":null,"round":-1,"uploaded":-1,"model":["", -2]}',
                                 b'{"v":1,"run":"a/b","proxy":"","round":-1,"uploaded":-1,"model":null}',
                                 b"{" + b" " * 2000 + b"}"])
def test_retention_off_malformed_sync_request_is_refused(raw):
    from fedmekt.wire.codec import WireError

    with pytest.raises(WireError):
        SyncRequest.from_bytes(raw)
    held = SyncRequest(run="1764660000000-0a1b2c3d", proxy="ab" * 32, round=3, uploaded=2, model=("", -1))
    assert SyncRequest.from_bytes(held.to_bytes()) == held
