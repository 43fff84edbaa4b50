"""Whole federations through a real broker: aggregator + one agent per client, nothing shared but MQTT.

The tiny synthetic split of the core tests keeps each run to a few seconds; results are compared
with the in-process runner (``fedmekt reproduce``'s engine) for exact equality.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from core_support import tiny_config, tiny_split
from fedmekt.transport.broker import AmqttBroker
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.transport.mqtt import LinkOptions, MqttLink, Presence
from fedmekt_cli.simulation import run_simulation, write_outputs
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import encode
from fedmekt.wire.topics import Topics
from learning_rows import learning

pytestmark = pytest.mark.broker


FRAMING_PER_UPLOAD = 100  # bytes: topic, frame header and MQTT fixed header of one upload message


def _simulate(cfg, split, url, tmp_path, **kw):
    return run_simulation(cfg, split, url=url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                          workdir=tmp_path / "devices", round_timeout=60, **kw)


@pytest.mark.parametrize("algorithm", ["fedmekt-c", "fedmekt-c/round", "fedmekt-c/mean", "fedmekt-c/float32",
                                       "fedmekt-s", "mmfedavg", "mmfedprox", "mmmoon"])
def test_federation_through_mosquitto_equals_inprocess(algorithm, mosquitto, tmp_path):
    """``fedmekt-c/round``: no proxy set is published; each round's windows travel with its knowledge.
    ``fedmekt-c/mean``: the server distils from the clients' mean (the paper), not through per-client heads.
    ``fedmekt-c`` sends int8 codes with per-channel scales (the default, ``wire_dtype`` "auto"), ``fedmekt-c/float32``
    plain floats; under ``/round`` each round's windows travel in int8 too."""
    algorithm, _, variant = algorithm.partition("/")
    cfg = tiny_config(algorithm, proxy_delivery="round" if variant == "round" else "once",
                      wire_dtype="float32" if variant == "float32" else "auto",
                      hyper=dict(server_teacher="mean") if variant == "mean" else None)
    split = tiny_split()
    sim = _simulate(cfg, split, mosquitto.url, tmp_path)
    ref = run_inprocess(cfg, split, progress=False)
    assert len(sim.result.rows) == cfg.rounds
    for row in sim.result.rows:
        assert row["absorbed"] == row["selected"] == cfg.per_round and row["rejected"] == 0
    assert [learning(r) for r in sim.result.rows] == [learning(r) for r in ref.rows]
    assert learning(sim.result.final) == learning(ref.final)
    for k, v in ref.model_state.items():
        np.testing.assert_array_equal(sim.result.model_state[k], v)
    assert sim.result.final["proxy_delivery"] == ref.final["proxy_delivery"]
    assert (sim.result.final["bytes_proxy_once"] == 0) == (variant == "round" or not cfg.is_embedding)
    # the subscriber saw every upload; MQTT framing adds little to the accounted payload: under 2 % of it
    # plus a fixed topic-and-header cost per upload (which dominates the tiny rep-only uploads here)
    wire, accounted = sim.wire["packet_bytes"]["upload"], sum(r["bytes_up"] for r in sim.result.rows)
    uploads = sum(r["absorbed"] for r in sim.result.rows)
    assert accounted <= wire < 1.02 * accounted + FRAMING_PER_UPLOAD * uploads
    write_outputs(tmp_path / "out", sim)
    assert (tmp_path / "out" / "results.md").exists() and (tmp_path / "out" / "checkpoint.safetensors").exists()
    assert json.loads((tmp_path / "out" / "wire.json").read_text())["messages"]["upload"] >= cfg.rounds * cfg.per_round


def test_federation_through_amqtt_speaks_mqtt311(tmp_path):
    cfg, split = tiny_config("fedmekt-c", rounds=1), tiny_split()
    broker = AmqttBroker()
    try:
        sim = _simulate(cfg, split, broker.url, tmp_path)
    finally:
        broker.stop()
    ref = run_inprocess(cfg, split, progress=False)
    assert [learning(r) for r in sim.result.rows] == [learning(r) for r in ref.rows]


def test_client_joining_late_is_selected_in_later_rounds(mosquitto, tmp_path):
    cfg, split = tiny_config("fedmekt-c", rounds=3, per_round=6), tiny_split()
    seen_online: list[int] = []

    def before(rnd, agg):
        if rnd == 1:  # the late client connects once round 0 has started; let its presence arrive
            agg.wait_for_clients(6, timeout=15)
        seen_online.append(len(agg.online))

    sim = _simulate(cfg, split, mosquitto.url, tmp_path, late_clients=("c005",), before_round=before)
    rows = sim.result.rows
    assert seen_online[:2] == [5, 6] and rows[0]["selected"] == 5
    assert rows[1]["selected"] == rows[1]["absorbed"] == 6  # the late client trained and uploaded


def test_invalid_upload_is_discarded_and_the_round_completes(mosquitto, tmp_path):
    cfg, split = tiny_config("fedmekt-c", rounds=2), tiny_split()
    topics = Topics(cfg.federation)
    rogue = MqttLink(mosquitto.url, LinkOptions(client_id="rogue"), subscriptions=[topics.rounds]).connect()
    sent = threading.Event()

    def attack():
        while not sent.is_set():
            msg = rogue.get(timeout=0.1)
            if msg is None or not msg.payload:
                continue
            ann = fedwire.Announcement.from_bytes(msg.payload)
            if ann.done or ann.plan["round"] != 1:
                continue
            victim = ann.plan["selected"][0]
            bad = {"emb/a/rep": np.zeros((3, 3), np.float32)}  # wrong names and shapes
            frames = encode(bad, federation=cfg.federation, round_=1, sender=victim, kind="upload",
                            modalities=("a",))
            rogue.publish_all([(topics.upload_chunk(victim, 1, 0), frames[0]),
                               (topics.upload_chunk(victim, 1, 1), b"garbage")])
            sent.set()

    t = threading.Thread(target=attack, daemon=True)
    t.start()
    try:
        sim = _simulate(cfg, split, mosquitto.url, tmp_path)
    finally:
        sent.set()
        rogue.close()
    assert sim.discarded, "the rogue upload must be logged as discarded"
    assert any("tensor set" in d or "modalities" in d for d in sim.discarded)
    row = sim.result.rows[1]
    assert row["rejected"] >= 1 and row["absorbed"] == row["selected"]
    ref = run_inprocess(cfg, split, progress=False)
    assert learning(sim.result.final) == learning(ref.final)  # nothing of the rogue reached the model


def test_restart_resumes_from_checkpoint_with_the_same_result(mosquitto, tmp_path):
    split = tiny_split()
    first = _simulate(tiny_config("fedmekt-c", rounds=2), split, mosquitto.url, tmp_path)
    assert len(first.result.rows) == 2
    cfg = tiny_config("fedmekt-c", rounds=3)  # same federation, extended: aggregator and clients resume
    resumed = _simulate(cfg, split, mosquitto.url, tmp_path)
    ref = run_inprocess(cfg, split, progress=False)
    assert [r["round"] for r in resumed.result.rows] == [0, 1, 2]
    assert [learning(r) for r in resumed.result.rows] == [learning(r) for r in ref.rows]
    assert learning(resumed.result.final) == learning(ref.final)
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1, 2]


def test_round_closes_early_when_a_selected_client_goes_offline(mosquitto, tmp_path):
    """A selected device that crashes (its Last Will fires) does not hold the round until the deadline."""
    cfg, split = tiny_config("fedmekt-c", rounds=1, per_round=7), tiny_split()
    topics = Topics(cfg.federation)
    presence = Presence(topics.status("c099"), fedwire.Status("online", ("a",)).to_bytes(),
                        fedwire.Status("offline", ("a",)).to_bytes())
    ghost = MqttLink(mosquitto.url, LinkOptions(client_id="c099"), presence,
                     [topics.rounds, topics.liveness]).connect()

    def crash_when_selected():
        deadline, proof = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            if proof:  # live heartbeat echoing the liveness challenge: a retained birth alone is not selected
                ghost.publish(presence.topic, fedwire.Status("online", ("a",), proof=proof).to_bytes())
            msg = ghost.get(timeout=0.1)
            if msg is not None and msg.topic == topics.liveness and msg.payload:
                proof = fedwire.LivenessChallenge.from_bytes(msg.payload).nonce
            elif msg is not None and msg.payload:
                ann = fedwire.Announcement.from_bytes(msg.payload)
                if not ann.done and "c099" in ann.plan["selected"]:
                    ghost.abort()  # no DISCONNECT: the broker publishes the retained Will "offline"
                    return

    t = threading.Thread(target=crash_when_selected, daemon=True)
    t.start()
    timeout = 300
    sim = run_simulation(cfg, split, url=mosquitto.url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                         workdir=tmp_path / "devices", round_timeout=timeout,
                         before_round=lambda rnd, agg: agg.wait_for_clients(7, timeout=30))
    row = sim.result.rows[0]
    assert row["selected"] == 7 and row["absorbed"] == 6
    assert row["wall_s"] < timeout / 2  # closed when the crash was known, not at the deadline
