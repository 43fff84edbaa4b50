"""Package freshness: a gateway installs only packages of its federation and of the run its signed
federation manifest names, ordered by (signed run order, round) — through a real mosquitto.

The gateway is a real :class:`edge_client.agent.EdgeAgent` with a model service and the
aggregator's public key; the "aggregator" here publishes signed manifests and packages (all
signed with the one key, as an attacker replaying or re-targeting genuine packages would have
them) on the federation's retained topics.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from core_support import tiny_config, tiny_split
from edge_client.agent import AgentOptions, EdgeAgent
from edge_client.inference import ModelService
from export.install import ModelStore
from export.package import MANIFEST, Manifest, load_private_key, load_public_key, sign_package
from export.push import publish_package
from export_support import built_package, signing_keys
from fault_ledger import record
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt_cli.simulation import client_store
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.runs import new_run_id
from fedmekt.wire.signing import sign
from fedmekt.wire.topics import Topics
from wait_support import wait_for

pytestmark = pytest.mark.broker
FED = "test-hapt"  # the federation of export_support's packages
OLD_RUN, NEW_RUN = new_run_id(1), new_run_id(2)


@pytest.fixture
def keys(tmp_path_factory):
    private, public = signing_keys(tmp_path_factory)
    return load_private_key(private), load_public_key(public)


@pytest.fixture
def package(data_dir, tmp_path_factory) -> Path:
    return built_package("hapt", data_dir, tmp_path_factory)


def bound(src: Path, dst: Path, key, *, round_: int, run: str, federation: str = FED) -> Path:
    """A copy of ``src`` re-signed with the aggregator's key for (federation, run, round)."""
    pkg = Path(shutil.copytree(src, dst))
    manifest = Manifest.from_bytes((pkg / MANIFEST).read_bytes())
    sign_package(pkg, Manifest(**{**manifest.__dict__, "round": round_, "run": run, "federation": federation}), key)
    return pkg


class Aggregator:
    """Publishes signed federation manifests and packages (retained) on ``FED``'s topics."""

    def __init__(self, url: str, key):
        self.key, self.topics = key, Topics(FED)
        self.link = MqttLink(url, LinkOptions(client_id="aggregator")).connect()
        self.previous = None

    def manifest(self, run: str) -> None:
        manifest, _ = fedwire.build(tiny_config(federation=FED), tiny_split(), run=run)
        topic = self.topics.proxy_manifest
        self.link.publish_all([(topic, sign(self.key, topic, manifest.to_bytes()))], retain=True)

    def package(self, path: Path) -> None:
        self.previous = publish_package(self.link, FED, path, previous=self.previous)


class Gateway:
    """A running edge agent with a model service; ``store`` reads what it has in service."""

    def __init__(self, url: str, tmp: Path, public_key):
        split = tiny_split()
        c = split.clients[0]
        self.sample_store = client_store(tmp / "gw" / "store.sqlite", c, "synthetic", 20.0, split.label_names)
        self.service = ModelService(tmp / "gw" / "models", public_key, FED)
        self.agent = EdgeAgent(url, AgentOptions(c.client_id, FED, self.sample_store, tmp / "gw",
                                                 models=self.service, public_key=public_key))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.store = ModelStore(tmp / "gw" / "models", public_key)

    def wait(self, what, message: str, timeout: float = 30.0) -> None:
        def done() -> bool:
            if what():
                return True
            assert self.thread.is_alive(), "the gateway stopped"
            return False

        wait_for(done, timeout, message, detail=lambda: f"last error: {self.service.receiver.last_error}")

    def serving(self) -> tuple[str, int] | None:
        current = self.store.current()
        return None if current is None else (current.package.manifest.run, current.package.manifest.round)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sample_store.close()


@pytest.fixture
def federation(mosquitto, keys, tmp_path):
    agg = Aggregator(mosquitto.url, keys[0])
    gateways: list[Gateway] = []

    def gateway() -> Gateway:
        gateways.append(Gateway(mosquitto.url, tmp_path, keys[1]))
        return gateways[-1]

    yield agg, gateway
    for g in gateways:
        g.close()
    agg.link.close()


def test_rollback_fresh_gateway_does_not_install_an_old_runs_retained_package(federation, package, keys, tmp_path):
    agg, gateway = federation
    agg.package(bound(package, tmp_path / "old6", keys[0], round_=6, run=OLD_RUN))  # retained from the last run
    agg.manifest(NEW_RUN)
    gw = gateway()
    gw.wait(lambda: gw.agent.manifest is not None and gw.service.receiver.last_error, "the old package's refusal")
    assert gw.agent.manifest.run == NEW_RUN
    assert "manifest names run" in gw.service.receiver.last_error
    assert gw.serving() is None
    agg.package(bound(package, tmp_path / "new1", keys[0], round_=1, run=NEW_RUN))  # the run it follows: installed
    gw.wait(lambda: gw.serving() == (NEW_RUN, 1), "the new run's package")
    record("attack", "old run's retained package on a fresh gateway")


def test_downgrade_to_another_federations_package_signed_with_the_same_key_is_refused(federation, package, keys,
                                                                                       tmp_path):
    agg, gateway = federation
    agg.manifest(NEW_RUN)
    agg.package(bound(package, tmp_path / "r150", keys[0], round_=150, run=NEW_RUN))
    gw = gateway()
    gw.wait(lambda: gw.serving() == (NEW_RUN, 150), "round 150")
    agg.package(bound(package, tmp_path / "other", keys[0], round_=151, run=NEW_RUN, federation="other"))
    gw.wait(lambda: gw.service.receiver.last_error, "the other federation's package to be refused")
    assert "package of federation 'other'" in gw.service.receiver.last_error
    assert gw.serving() == (NEW_RUN, 150)
    record("attack", "another federation's package signed with the same key")


def test_rollback_new_runs_round_5_supersedes_previous_runs_round_6_and_old_runs_stay_refused(federation, package,
                                                                                              keys, tmp_path):
    agg, gateway = federation
    agg.manifest(OLD_RUN)
    agg.package(bound(package, tmp_path / "old6", keys[0], round_=6, run=OLD_RUN))
    gw = gateway()
    gw.wait(lambda: gw.serving() == (OLD_RUN, 6), "the previous run's round 6")
    agg.manifest(NEW_RUN)  # a new run: its order is signed in the manifest, its rounds start again
    agg.package(bound(package, tmp_path / "new5", keys[0], round_=5, run=NEW_RUN))
    gw.wait(lambda: gw.serving() == (NEW_RUN, 5), "the new run's round 5 over the previous run's round 6")
    agg.package(bound(package, tmp_path / "new4", keys[0], round_=4, run=NEW_RUN))  # a rollback within the run
    gw.wait(lambda: gw.service.receiver.last_error, "the round-4 package to be refused")
    assert "stale package" in gw.service.receiver.last_error
    gw.service.receiver.last_error = None
    agg.manifest(OLD_RUN)  # the previous run's genuine manifest replayed: the gateway keeps the run it serves
    agg.package(bound(package, tmp_path / "old7", keys[0], round_=7, run=OLD_RUN))
    gw.wait(lambda: gw.service.receiver.last_error, "the old run's round-7 package to be refused")
    assert gw.agent.manifest.run == NEW_RUN and gw.serving() == (NEW_RUN, 5)
    record("attack", "package rollback / old run's manifest and package replayed", tried=3, handled=3)
