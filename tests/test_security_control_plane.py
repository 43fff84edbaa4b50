"""A signed control plane and per-round nonces, attacked through a real mosquitto.

Everything the aggregator tells clients (manifest, announcements, "done") is signed with its
Ed25519 key and verified by clients before they act; the global knowledge and the proxy set are
bound to hashes that signed messages name; each upload echoes its round's nonce. ``fedmekt
simulate`` runs this signed path by default (ephemeral key pair), so the attacks below hit a
federation of separate MQTT connections exactly as deployed: each asserts that the attack's
effect is absent (today's unsigned path stalls, ends or changes the run).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core_support import tiny_config, tiny_split
from fault_ledger import record
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt_cli.simulation import run_simulation
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import WireError, decode_body, decode_single, encode, frame_body, parse_frame
from fedmekt.wire.runs import new_run_id, run_order
from fedmekt.wire.signing import MAGIC, SIGNATURE_BYTES, open_signed, sign
from fedmekt.wire.topics import Topics
from wait_support import wait_for
from learning_rows import learning


def _simulate(cfg, split, url, tmp_path, before_round=None, round_timeout: float = 15.0):
    return run_simulation(cfg, split, url=url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                          workdir=tmp_path / "devices", round_timeout=round_timeout, before_round=before_round)


def _every_round_complete(sim) -> None:
    for row in sim.result.rows:
        assert row["absorbed"] == row["selected"], (row["round"], sim.discarded)


def _ignored(caplog, topic: str, client_id: str = "") -> list[str]:
    """Lines in which clients (``client_id`` alone if given) refused a message on ``topic``."""
    return [m for m in (r.getMessage() for r in list(caplog.records) if r.name == "edge_client")
            if f"on {topic}:" in m and m.startswith(f"{client_id}: ignored" if client_id else "")]


# -- the envelope -----------------------------------------------------------------------------
def test_forged_control_envelope_verifies_only_the_signed_payload_on_its_topic():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    topic, payload = "fedmekt/t/rounds", b'{"federation":"t"}'
    signed = sign(key, topic, payload)
    assert signed.startswith(MAGIC) and len(signed) == len(MAGIC) + SIGNATURE_BYTES + len(payload)
    assert open_signed(key.public_key(), topic, signed) == payload
    assert open_signed(None, topic, signed) == payload == open_signed(None, topic, payload)  # no key: as before
    forged = [(topic, payload, "unsigned"),  # plain JSON while a key is configured
              (topic, signed[:-1] + b"]", "bad signature"),  # altered body under a genuine signature
              ("fedmekt/u/rounds", signed, "bad signature"),  # replayed on another federation's topic
              (topic, sign(other, topic, payload), "bad signature")]  # signed by another key
    for t, data, reason in forged:
        with pytest.raises(WireError, match=reason):
            open_signed(key.public_key(), t, data)
    assert open_signed(key.public_key(), topic, b"") == b""  # a cleared retained message carries nothing to act on
    assert fedwire.Announcement.from_bytes(sign(key, topic, fedwire.Announcement("t", None, 1.0, done=True)
                                                .to_bytes())).done  # observers read signed messages too


def test_run_ids_order_runs_by_epoch_then_the_earlier_timed_ids_then_any_other():
    assert run_order(new_run_id(2)) > run_order(new_run_id(1)) > run_order("9999999999999-0a0b0c0d")
    assert run_order(new_run_id(10)) > run_order(new_run_id(9))  # numerically, not as text
    assert run_order("1800000000000-0a0b0c0d") > run_order("1700000000000-0a0b0c0d") > run_order("")
    assert run_order("") == run_order("a1b2c3d4e5f6") == run_order("e0-0a0b0c0d") == run_order("e01-0a0b0c0d")
    assert new_run_id(3) != new_run_id(3)  # two runs of one epoch (a shared counter lost) still differ
    for bad in (0, -1, 10**18):
        with pytest.raises(ValueError):
            new_run_id(bad)


def test_nonce_is_carried_and_validated_by_the_upload_header():
    tensors = {"x": np.ones((2, 3), np.float32)}
    frame = encode(tensors, federation="t", round_=3, sender="c000", kind="upload", nonce="0f" * 8)[0]
    header, _ = decode_single(frame)
    assert header.nonce == "0f" * 8
    assert decode_single(encode(tensors, federation="t", round_=3, sender="c000", kind="upload")[0])[0].nonce == ""
    for bad in ("XYZ", "0" * 33):
        with pytest.raises(WireError, match="nonce"):
            encode(tensors, federation="t", round_=3, sender="c000", kind="upload", nonce=bad)
    with pytest.raises(WireError, match="nonce"):
        fedwire.Announcement.from_bytes(fedwire.Announcement("t", {}, 1.0, nonce="not hex").to_bytes())


# -- attacks through mosquitto ----------------------------------------------------------------
@pytest.mark.broker
@pytest.mark.timeout(240)
def test_forged_control_manifest_with_a_new_run_id_is_rejected_and_rounds_keep_their_uploads(mosquitto, tmp_path,
                                                                                              caplog):
    """A legitimate manifest re-published (retained) with a new run id under the genuine signature: any login
    can do it on a plain broker, the aggregator's on the secured one. Unsigned clients would follow the
    forged run and stop uploading; signed ones log one line each and keep serving the run they trust, and the
    aggregator puts its genuine manifest back for clients that start later."""
    caplog.set_level(logging.WARNING, logger="edge_client")
    cfg, split = tiny_config("fedmekt-c", rounds=3), tiny_split()
    topic = Topics(cfg.federation).proxy_manifest
    forger = MqttLink(mosquitto.url, LinkOptions(client_id="forger"), subscriptions=[topic]).connect()
    genuine_run = []

    def forge(rnd, agg):
        if rnd != 1:
            return
        genuine_run.append(agg.run_id)
        genuine = None
        while genuine is None:
            msg = forger.get(timeout=5)
            assert msg is not None, "the retained manifest never arrived"
            genuine = msg.payload if msg.topic == topic and msg.payload else None
        forged = dataclasses.replace(agg.manifest, run=new_run_id(10**6)).to_bytes()
        forger.publish_all([(topic, genuine[:len(MAGIC) + SIGNATURE_BYTES] + forged)], retain=True)
        wait_for(lambda: all(_ignored(caplog, topic, c.client_id) for c in split.clients), 60,
                 "every client to refuse the forged manifest before round 1 is announced")

    try:
        sim = _simulate(cfg, split, mosquitto.url, tmp_path, before_round=forge)
    finally:
        forger.close()
    assert len(sim.result.rows) == 3
    _every_round_complete(sim)
    lines = _ignored(caplog, topic)
    assert len(lines) >= len(split.clients) and all("bad signature" in line for line in lines), lines
    with MqttLink(mosquitto.url, LinkOptions(client_id="late-reader"), subscriptions=[topic]).connect() as late:
        retained = late.get(timeout=5)
    # the aggregator saw its retained manifest replaced and put its own back for clients that start later
    assert retained is not None and fedwire.FederationManifest.from_bytes(retained.payload).run == genuine_run[0]
    record("attack", "forged manifest (new run id, genuine signature)")


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_forged_control_done_and_announcement_are_ignored(mosquitto, tmp_path, caplog):
    """A forged "done" of the current run (and a forged plan) on the retained ``rounds`` topic, and a forged
    request to send an upload again on each client's ``reply/resend``: unsigned clients would quit the run
    (or re-send on demand); signed ones ignore each with one line and every round completes."""
    caplog.set_level(logging.WARNING, logger="edge_client")
    cfg, split = tiny_config("fedmekt-c", rounds=3), tiny_split()
    topics = Topics(cfg.federation)
    topic = topics.rounds
    forger = MqttLink(mosquitto.url, LinkOptions(client_id="forger")).connect()

    def forge(rnd, agg):
        if rnd != 1:
            return
        done = fedwire.Announcement(cfg.federation, None, 0.0, done=True, rounds=1, run=agg.run_id)
        plan = fedwire.Announcement(cfg.federation, {"round": 1, "selected": ["c000"], "proxy_windows": [0]},
                                    60.0, run=agg.run_id)
        for forged in (plan, done):
            forger.publish_all([(topic, forged.to_bytes())], retain=True)
        forger.publish_all((topics.reply(c.client_id, topics.resend), plan.to_bytes()) for c in split.clients)
        # proof every client handled all three, refused (one that quit on the done would not log its refusal)
        ids = [c.client_id for c in split.clients]
        resend = {c: topics.reply(c, topics.resend) for c in ids}
        wait_for(lambda: all(len(_ignored(caplog, topic, c)) >= 2 and _ignored(caplog, resend[c], c) for c in ids), 60,
                 "every client to refuse the forged plan, done and re-send request")

    try:
        sim = _simulate(cfg, split, mosquitto.url, tmp_path, before_round=forge)
    finally:
        forger.close()
    assert len(sim.result.rows) == 3
    _every_round_complete(sim)
    lines = _ignored(caplog, topic)
    assert len(lines) >= 2 * len(split.clients) and all("unsigned control message" in line for line in lines), lines
    resend = [line for c in split.clients for line in _ignored(caplog, topics.reply(c.client_id, topics.resend))]
    assert len(resend) == len(split.clients) and all("unsigned control message" in line for line in resend), resend
    record("attack", "forged done / round announcement / upload re-send request", tried=3, handled=3)


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_nonce_replayed_upload_reframed_for_a_later_round_is_refused(mosquitto, tmp_path):
    """A client's round-0 upload, re-framed as its round-2 upload the moment round 2 is announced: refused
    for its nonce (logged, counted as rejected), the client's own upload is absorbed and nothing of the replay
    reaches the model (final evaluation equals the in-process run's)."""
    cfg, split = tiny_config("fedmekt-c", rounds=3, per_round=6), tiny_split()
    topics = Topics(cfg.federation)
    victim = "c001"
    spy = MqttLink(mosquitto.url, LinkOptions(client_id="replayer"),
                   subscriptions=[topics.rounds, f"{topics.prefix}/clients/{victim}/upload/0/#"]).connect()
    replayed = threading.Event()

    def replay():
        frames, old = Reassembler(), None
        while not replayed.is_set():
            msg = spy.get(timeout=0.1)
            if msg is None or not msg.payload:
                continue
            if msg.topic != topics.rounds:
                old = frames.add(msg.payload) or old
                continue
            ann = fedwire.Announcement.from_bytes(msg.payload)
            if old is not None and not ann.done and ann.plan["round"] == 2:
                h = old.header
                out = frame_body(old.body, dtype=h.dtype, federation=h.federation, round_=2, sender=victim,
                                 kind="upload", modalities=h.modalities, tensors=h.tensors, nonce=h.nonce)
                spy.publish_all([(topics.upload_chunk(victim, 2, i), f) for i, f in enumerate(out)])
                replayed.set()

    attacker = threading.Thread(target=replay, daemon=True)
    attacker.start()
    try:
        sim = _simulate(cfg, split, mosquitto.url, tmp_path)
    finally:
        replayed.set()
        spy.close()
    refused = [d for d in sim.discarded if d.startswith(f"{victim} round 3:") and "nonce" in d]  # 1-based
    assert refused, sim.discarded
    assert not any("duplicate upload for round 3" in d for d in sim.discarded if d.startswith(victim))
    row = sim.result.rows[2]
    assert row["rejected"] >= 1 and row["absorbed"] == row["selected"] == 6
    ref = run_inprocess(cfg, split, progress=False)
    assert learning(sim.result.final) == learning(ref.final)
    record("attack", "old upload re-framed for a later round (nonce)")


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_forged_control_global_knowledge_is_not_trained_on(mosquitto, tmp_path, caplog):
    """Forged global knowledge of round 1 (same tensors, other values, sender "aggregator") reaches every client
    after the genuine one and before the announcement: unsigned clients would train on the last one received;
    signed ones use the message whose hash the signed announcement names, so the run equals the in-process one."""
    caplog.set_level(logging.DEBUG, logger="edge_client")
    cfg, split = tiny_config("fedmekt-c", rounds=2), tiny_split()
    topics = Topics(cfg.federation)
    forger = MqttLink(mosquitto.url, LinkOptions(client_id="forger")).connect()
    forged_rounds = []

    def holding(sha: str) -> list[str]:
        return [c.client_id for c in split.clients if any(
            r.getMessage() == f"{c.client_id}: global knowledge of round 2 received (sha256 {sha})"
            for r in list(caplog.records))]

    def forge(rnd, agg):
        if rnd != 1:
            return
        publish = agg.link.publish_all

        def then_forge(items, **kw):
            items = list(items)
            sent = publish(items, **kw)
            if items and items[0][0].startswith(f"{topics.prefix}/global/1/"):
                genuine = Reassembler()
                done = [c for c in (genuine.add(p) for _, p in items) if c is not None][0]
                tensors = {k: -v - 1.0 for k, v in decode_body(done.header, done.body).items()}
                frames = encode(tensors, cfg.wire_format, federation=cfg.federation, round_=1, sender="aggregator",
                                kind="global")
                forger.publish_all([(topics.global_chunk(1, i), f) for i, f in enumerate(frames)])
                forged_rounds.append(rnd)
                sha = parse_frame(frames[0])[0].sha256
                wait_for(lambda: len(holding(sha)) == len(split.clients), 60,
                         "every client to hold the forged copy before the announcement",
                         detail=lambda: f"held by {holding(sha)}")
            return sent

        agg.link.publish_all = then_forge

    try:
        sim = _simulate(cfg, split, mosquitto.url, tmp_path, before_round=forge)
    finally:
        forger.close()
    assert forged_rounds == [1]
    _every_round_complete(sim)
    ref = run_inprocess(cfg, split, progress=False)
    assert [learning(r) for r in sim.result.rows] == [learning(r) for r in ref.rows]
    record("attack", "forged global knowledge of a round")


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_forged_control_proxy_chunk_is_restored_for_clients_that_start_later(mosquitto, tmp_path, caplog):
    """A retained proxy chunk overwritten mid-run (any login on a plain broker, the aggregator's on the secured
    one): running clients already hold the proxy set, and the aggregator puts its chunk back, so a gateway that
    starts after the forgery still assembles the proxy set the signed manifest names."""
    cfg, split = tiny_config("fedmekt-c", rounds=3), tiny_split()
    topics = Topics(cfg.federation)
    forger = MqttLink(mosquitto.url, LinkOptions(client_id="forger")).connect()
    genuine = []

    def forge(rnd, agg):
        if rnd == 1:
            genuine.append((agg.manifest, agg.proxy_frames))
            forger.publish_all([(topics.proxy_chunk(0), b"FMK\x01garbage")], retain=True)

    try:
        sim = _simulate(cfg, split, mosquitto.url, tmp_path, before_round=forge)
    finally:
        forger.close()
    _every_round_complete(sim)
    # the aggregator saw the forgery land (live, before the rounds that followed) and put its chunk back
    assert f"retained {topics.proxy_chunk(0)} was replaced by another publisher; restoring ours" in caplog.messages
    manifest, frames = genuine[0]
    with MqttLink(mosquitto.url, LinkOptions(client_id="late-gateway"), subscriptions=[topics.proxy_all]).connect() \
            as late:
        rx, proxy, deadline = fedwire.ProxyReceiver(manifest), None, time.monotonic() + 10
        while proxy is None and time.monotonic() < deadline:
            msg = late.get(timeout=0.5)
            if msg is not None and msg.topic != topics.proxy_manifest:
                try:
                    proxy = rx.add(msg.payload)
                except WireError:  # the forged chunk, had it stayed
                    continue
    assert proxy is not None and len(frames) >= 1
    record("attack", "forged retained proxy chunk")
