"""A federation through a mosquitto with retained messages off (``retain_available false``).

Such a broker refuses every retained publication (it drops the connection) and keeps nothing for a
client that subscribes later, as a clustered broker's other nodes or a broker restarted without
persistence do. The protocol's state must then come from sync requests the aggregator answers.
"""

from __future__ import annotations

import time

import pytest

from core_support import tiny_config, tiny_split
from fedmekt.errors import UserError
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics
from fedmekt_cli.simulation import run_simulation
from learning_rows import learning
from wait_support import wait_for

pytestmark = pytest.mark.broker


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
                link.publish_all([(topics.rounds, b"x")], retain=True, timeout=30 if survives else 3)
                acked = True  # the broker took it: had it meant to drop us, it would have done so instead
            except (TimeoutError, UserError):
                acked = False
            if not survives:
                wait_for(lambda: link.connects > 1 or not link.connected, 30,
                         "mosquitto to drop the connection that published a retained message")
            assert acked is survives and (link.connects == 1 and link.connected) is survives, (flags, link.connects)


def _simulate(cfg, split, url, tmp_path, **kw):
    return run_simulation(cfg, split, url=url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                          workdir=tmp_path / "devices", round_timeout=60, **kw)


def test_retention_off_federation_equals_inprocess(no_retain, tmp_path):
    cfg, split = tiny_config("fedmekt-c", clients=(1, 1, 1), per_round=3), tiny_split(clients=(1, 1, 1))
    sim = _simulate(cfg, split, no_retain.url, tmp_path)
    ref = run_inprocess(cfg, split, progress=False)
    assert [r["absorbed"] for r in sim.result.rows] == [3, 3]
    assert [learning(r) for r in sim.result.rows] == [learning(r) for r in ref.rows]
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


def test_sync_limiter_answers_a_flood_once_per_interval_and_counts_it():
    """The rule the flood test below bounds through a real broker, on a given clock: 30 requests over 1.45 s
    at one answer per second are answered at 0 s, 1 s and (the latest one kept) 2 s."""
    from aggregator.sync import SyncLimiter

    limiter, answered = SyncLimiter(interval=1.0), []
    for i in range(30):
        limiter.add("c000", SyncRequest())
        answered += [i * 0.05 for _ in limiter.due(i * 0.05)]
    assert limiter.waiting == 1 and limiter.next_due() == 2.0
    answered += [2.0 for _ in limiter.due(2.0)]
    assert answered == [0.0, 1.0, 2.0] and (limiter.requests, limiter.answers, limiter.waiting) == (30, 3, 0)


def test_retention_off_sync_flood_gets_the_proxy_set_once(no_retain, tmp_path):
    """A client asking 30 times in a row is answered at most once per interval, the proxy set once."""
    import threading

    from aggregator.service import Aggregator, AggregatorOptions

    cfg, split = tiny_config("fedmekt-c", rounds=1, per_round=1), tiny_split()
    interval = 0.5
    agg = Aggregator(cfg, split, no_retain.url, AggregatorOptions(out=tmp_path / "agg", wait_timeout=15,
                                                                   progress=False, sync_interval=interval))
    topics = Topics(cfg.federation)
    gave_up: list[UserError] = []

    def serve() -> None:
        try:
            agg.run()
        except UserError as exc:  # nobody comes
            gave_up.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert agg.published.wait(30)
    limiter, got = agg.sync_limiter, []  # got: (monotonic time received, federation topic)
    with MqttLink(no_retain.url, LinkOptions(client_id="c000"), subscriptions=[topics.replies("c000")]).connect() \
            as flooder:
        request = SyncRequest().to_bytes()  # holds nothing
        first = time.monotonic()
        for _ in range(30):
            flooder.publish(topics.sync("c000"), request)
            time.sleep(0.05)  # the flood's pace, not a wait on anything
        wait_for(lambda: limiter.requests == 30 and not limiter.waiting, 60,
                 "the aggregator to take the 30 requests and answer the last one it kept",
                 detail=lambda: f"{limiter.requests} taken, {limiter.waiting} waiting")

        def every_answer_in() -> bool:  # each answer names the manifest (the request holds no run)
            while (msg := flooder.get(timeout=0.05)) is not None:
                got.append((time.monotonic(), topics.replied("c000", msg.topic)))
            return [t for _, t in got].count(topics.proxy_manifest) >= limiter.answers

        wait_for(every_answer_in, 30, f"the {limiter.answers} answers")
    proxy = f"{topics.prefix}/proxy/"
    proxy_chunks = sum(1 for _, t in got if t and t.startswith(proxy) and t != topics.proxy_manifest)
    manifests = [at for at, t in got if t == topics.proxy_manifest]
    assert proxy_chunks == len(agg.proxy_frames) >= 1  # the bulky part once, not 30 times
    # answers at least `interval` apart: all but the last went out between the first request and the last receipt
    assert 1 <= len(manifests) == limiter.answers <= 2 + (manifests[-1] - first) / interval, \
        (len(manifests), manifests[-1] - first)
    thread.join(60)
    assert gave_up and not thread.is_alive()


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"v": 2}', b'{"v":1,"run":"x","proxy":"ZZ","round":0,"uploaded":0}',
                                 b'{"v":1,"run":"","proxy":"","round":true,"uploaded":-1,"model":null}',
                                 b'{"v":1,"run":"","proxy":null,"round":-1,"uploaded":-1,"model":["", -2]}',
                                 b'{"v":1,"run":"a/b","proxy":"","round":-1,"uploaded":-1,"model":null}',
                                 b'{"v":1,"run":"","proxy":null,"round":-1,"uploaded":-1,"model":null,"class":"Big"}',
                                 b'{"v":1,"run":"","proxy":null,"round":-1,"uploaded":-1,"model":null,"class":5}',
                                 b"{" + b" " * 2000 + b"}"])
def test_retention_off_malformed_sync_request_is_refused(raw):
    from fedmekt.wire.codec import WireError

    with pytest.raises(WireError):
        SyncRequest.from_bytes(raw)
    held = SyncRequest(run="1764660000000-0a1b2c3d", proxy="ab" * 32, round=3, uploaded=2, model=("", -1),
                       device_class="small")
    assert SyncRequest.from_bytes(held.to_bytes()) == held


@pytest.mark.slow
def test_retention_off_inference_only_follower_gets_the_signed_manifest_and_package_by_sync(no_retain, tmp_path):
    """An inference-only gateway that joins mid-run finds nothing retained: the signed manifest went out before
    it connected, so only the aggregator's answer to its sync request lets it trust the run's packages."""
    from export.install import ModelStore
    from export.package import generate_keypair, load_public_key
    from federation_harness import ProcessFederation

    generate_keypair(tmp_path / "agg.key", tmp_path / "agg.pub")
    fed = ProcessFederation(tmp_path, rounds=4, clients=(1, 1, 1), per_round=3, round_timeout=60.0,
                            federation="follow", broker=no_retain)
    try:
        for cid in fed.client_ids:
            fed.start_client(cid, True, "--public-key", str(tmp_path / "agg.pub"))
        fed.start_aggregator("--signing-key", str(tmp_path / "agg.key"), "--package-every", "1")
        fed.wait_round_done(0)  # a package of round 1 went out, live only: a later subscriber cannot see it
        fed.start_infer_only("gw01", tmp_path / "agg.pub")
        assert fed.wait_exit("gw01", 150) == 0, fed.log("gw01")[-3000:]
        installed = ModelStore(tmp_path / "gw01" / "models", load_public_key(tmp_path / "agg.pub")).current()
        assert installed is not None and installed.package.manifest.federation == "follow", fed.log("gw01")[-2000:]
        assert installed.package.manifest.round >= 1
        assert "prediction" in fed.log("gw01")
        topics = Topics("follow")
        answered = [topics.replied("gw01", t) for _, t, p in fed.recorder.snapshot() if p]
        assert topics.proxy_manifest in answered  # the manifest reached it as a sync answer, on its reply topic
        assert fed.wait_exit("aggregator", 300) == 0, fed.log("aggregator")[-3000:]
        assert "retain" not in no_retain.log.lower()
    finally:
        fed.close()
