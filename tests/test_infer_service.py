"""The running client's ModelService: no model → no predictions; a pushed package is swapped in; a rogue one is not."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from edge_client.inference import ModelService
from export.package import MANIFEST, Manifest, generate_keypair, load_private_key, load_public_key, sign_package
from export.push import publish_package
from export_support import built_package, signing_keys, trained_run
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from sensors.recording import SampleBatch


def pump(link: MqttLink, service: ModelService, until, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, service.receiver.last_error
        msg = link.get(timeout=0.1)
        if msg is not None:
            service.handle(msg.topic, msg.payload)


@pytest.mark.broker
def test_service_swaps_in_pushed_models(mosquitto, data_dir, tmp_path, tmp_path_factory):
    run = trained_run("hapt", data_dir, tmp_path_factory)
    v3 = built_package("hapt", data_dir, tmp_path_factory)
    private, public = signing_keys(tmp_path_factory)
    v4 = Path(shutil.copytree(v3, tmp_path / "v4"))
    manifest = Manifest.from_bytes((v4 / MANIFEST).read_bytes())
    sign_package(v4, Manifest(**{**manifest.__dict__, "round": 4}), load_private_key(private))
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    rogue = Path(shutil.copytree(v3, tmp_path / "rogue"))
    sign_package(rogue, Manifest(**{**manifest.__dict__, "round": 5}), load_private_key(tmp_path / "rogue.key"))
    rec = run.test[0]
    batch = SampleBatch(rec.timestamps[:200], {"acce": rec.modalities["acce"][:200]}, rec.labels[:200], rec.unit)

    service = ModelService(tmp_path / "models", load_public_key(public), "test-hapt", "acce",
                           accept_hand_exported=True)  # packages exported by hand, bound to no run
    assert service.recognizer is None and service.feed(batch) == []
    with MqttLink(mosquitto.url, LinkOptions(client_id="aggregator")).connect() as agg, \
            MqttLink(mosquitto.url, LinkOptions(client_id="c000"), subscriptions=[service.subscription]).connect() as gw:
        ann = publish_package(agg, "test-hapt", v3)
        pump(gw, service, lambda: service.recognizer is not None)
        assert len(service.feed(batch)) == (200 - 32) // 16 + 1
        ann = publish_package(agg, "test-hapt", v4, previous=ann)
        pump(gw, service, lambda: service.recognizer.package.manifest.round == 4)
        in_service = service.recognizer
        publish_package(agg, "test-hapt", rogue, previous=ann)
        pump(gw, service, lambda: service.receiver.last_error is not None)
        assert "bad signature" in service.receiver.last_error and service.recognizer is in_service
    # a restarted client comes up with the installed model
    again = ModelService(tmp_path / "models", load_public_key(public), "test-hapt", "acce")
    assert again.recognizer.package.manifest.round == 4
