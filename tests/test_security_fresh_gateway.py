"""A fresh gateway is never given a model older than what its federation has published, through a real mosquitto.

* Provisioned after the federation reached epoch 2 (``provision add --aggregator-state``), a gateway whose
  state folder is empty refuses an older run's genuine signed manifest and package replayed retained
  (with the aggregator login, or by a compromised broker) and installs the current run's.
* A package exported by hand (``fedmekt export``: bound to no run) installs only on a gateway started
  with ``--accept-hand-exported``.
* A connection that takes over the aggregator's session and replays an older run's retained manifest
  while the aggregator is away is undone: after any reconnect the aggregator puts its retained
  control state back.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import threading

import paho.mqtt.client as mqtt
import pytest

from core_support import tiny_config, tiny_split
from edge_client.follower import FollowerOptions, InferenceGateway
from edge_client.inference import ModelService
from edge_client.sources import open_source
from export.package import load_private_key, load_public_key
from export.push import publish_package
from export_support import bound_copy, built_package, signing_keys
from fedmekt.transport.broker import free_port
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.provisioning import registry
from fedmekt.run_counter import next_epoch
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.runs import new_run_id, run_epoch
from fedmekt.wire.signing import sign, unwrap
from fedmekt.wire.topics import Topics
from fedmekt_cli.broker_args import min_epoch
from fedmekt_cli.simulation import run_simulation
from wait_support import wait_for

pytestmark = pytest.mark.broker
FED = "test-hapt"  # the federation of export_support's packages


class _Gateway:
    """An inference-only gateway (edge_client/follower.py) on a fresh state folder, running in a thread."""

    def __init__(self, url: str, folder, public_key, floor: int = 0, accept_hand_exported: bool = False):
        self.service = ModelService(folder / "models", public_key, FED, accept_hand_exported=accept_hand_exported)
        self.gateway = InferenceGateway(url, FollowerOptions(folder.name, FED, self.service, public_key,
                                                             state_dir=folder, min_epoch=floor))
        self.stop = threading.Event()
        source = open_source(f"udp:127.0.0.1:{free_port()}", folder.name, {"acce": 3}, None).source  # never ends
        self.thread = threading.Thread(target=self.gateway.run, args=(source, self.stop), daemon=True)

    def __enter__(self) -> "_Gateway":
        self.thread.start()
        wait_for(lambda: self.gateway.link is not None, 20, "the gateway's connection")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)

    def installed(self) -> tuple[str, int] | None:
        recognizer = self.service.recognizer
        return None if recognizer is None else (recognizer.package.manifest.run, recognizer.package.manifest.round)


def _signed_manifest(link: MqttLink, key, run: str) -> None:
    topic = Topics(FED).proxy_manifest
    body = fedwire.build(tiny_config(federation=FED), tiny_split(), run=run)[0].to_bytes()
    link.publish_all([(topic, sign(key, topic, body))], retain=True)


def test_fresh_gateway_provisioned_at_epoch_2_refuses_a_replayed_older_run(mosquitto, data_dir, tmp_path,
                                                                           tmp_path_factory, caplog):
    private, public = signing_keys(tmp_path_factory)
    key, pub = load_private_key(private), load_public_key(public)
    state = tmp_path / "aggregator-state"
    old_run, current = new_run_id(next_epoch(state, FED)), new_run_id(next_epoch(state, FED))
    registry.init(tmp_path / "operator", ("localhost",))
    floors = registry.run_floors((FED,), state, None)
    creds = registry.add(tmp_path / "operator", "gw01", "device", (FED,), min_epoch=floors) / "credentials.json"
    floor = min_epoch(argparse.Namespace(min_epoch=None, credentials=creds, federation=FED))  # as `fedmekt client`
    assert floor == 2
    package = built_package("hapt", data_dir, tmp_path_factory)
    with MqttLink(mosquitto.url, LinkOptions(client_id="replayer")).connect() as replayer:
        publish_package(replayer, FED, bound_copy(package, tmp_path / "old", key, old_run, 40))
        _signed_manifest(replayer, key, old_run)  # round 40 of the old run: genuine, signed, retained
        with caplog.at_level(logging.INFO), _Gateway(mosquitto.url, tmp_path / "gw01", pub, floor) as gw:
            wait_for(lambda: f"manifest of run {old_run} is older than epoch 2" in caplog.text, 20,
                  "the replayed manifest to be refused")
            wait_for(lambda: "waits for that run's signed federation manifest" in caplog.text, 20,
                  "the replayed package to be held back")
            assert gw.installed() is None
            publish_package(replayer, FED, bound_copy(package, tmp_path / "new", key, current, 1))
            _signed_manifest(replayer, key, current)
            wait_for(lambda: gw.installed() == (current, 1), 20, "the current run's package to be installed")
    assert (tmp_path / "gw01" / "run-trust.json").is_file()  # the floor now persists beside the models


def test_hand_exported_package_installs_only_on_a_gateway_told_to_accept_it(mosquitto, data_dir, tmp_path,
                                                                            tmp_path_factory):
    private, public = signing_keys(tmp_path_factory)
    pub = load_public_key(public)
    package = built_package("hapt", data_dir, tmp_path_factory)  # `fedmekt export`: signed, bound to no run
    with MqttLink(mosquitto.url, LinkOptions(client_id="replayer")).connect() as replayer:
        publish_package(replayer, FED, package)
        with _Gateway(mosquitto.url, tmp_path / "gw01", pub) as gw:
            wait_for(lambda: gw.service.receiver.last_error is not None or gw.installed() is not None, 20,
                  "the hand-exported package to be handled")
            assert gw.installed() is None, "a gateway not told to accept it installed a hand-exported package"
            assert "hand-exported package" in gw.service.receiver.last_error
        with _Gateway(mosquitto.url, tmp_path / "gw02", pub, accept_hand_exported=True) as gw:
            wait_for(lambda: gw.installed() is not None, 20, "the hand-exported package on the gateway that accepts it")
            assert gw.installed()[0] == ""


def _take_over_and_replay(agg, url: str, payload: bytes) -> None:
    """Connect with the aggregator's client id (the broker drops its connection), put ``payload`` retained on
    the manifest topic while it is away, leave; retried until the publication is acknowledged before the
    aggregator's reconnect takes the session back."""
    port = int(url.rsplit(":", 1)[1])
    topic = Topics(agg.cfg.federation).proxy_manifest
    births = agg.link.births
    for _ in range(20):
        taker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agg.link_options.client_id,
                            reconnect_on_failure=False)
        taker.connect("127.0.0.1", port)
        taker.loop_start()
        try:
            info = taker.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(timeout=5)
            if info.is_published():
                break
        except (RuntimeError, ValueError):  # dropped by the aggregator's reconnect before it was sent
            pass
        finally:
            taker.disconnect()
            taker.loop_stop()
    else:
        raise AssertionError("the replayed manifest was never acknowledged")
    wait_for(lambda: agg.link.births > births, 30, "the aggregator to reconnect after the takeover")


def test_aggregator_reasserts_its_retained_manifest_after_a_session_takeover(mosquitto, tmp_path):
    cfg, split = tiny_config("mmfedavg", rounds=3), tiny_split()
    next_epoch(tmp_path, cfg.federation)  # an earlier run: this one is epoch 2
    replayed: list[str] = []

    def take_over(rnd, agg):
        if rnd != 1:
            return
        old = dataclasses.replace(agg.manifest, run=new_run_id(run_epoch(agg.run_id) - 1))
        replayed.append(old.run)
        topic = Topics(cfg.federation).proxy_manifest
        _take_over_and_replay(agg, mosquitto.url, sign(agg.opts.signing_key, topic, old.to_bytes()))

    sim = run_simulation(cfg, split, url=mosquitto.url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                         workdir=tmp_path / "devices", round_timeout=15.0, before_round=take_over)
    assert replayed and len(sim.result.rows) == 3
    with MqttLink(mosquitto.url, LinkOptions(client_id="fresh"), subscriptions=[Topics(cfg.federation)
                                                                                .proxy_manifest]).connect() as fresh:
        msg = fresh.get(timeout=10)
    assert msg is not None and msg.retain, "no retained manifest"
    run = fedwire.FederationManifest.from_bytes(unwrap(msg.payload)).run
    assert run_epoch(run) == 2 and run != replayed[0], f"the retained manifest is the replayed run {run}"
