"""Push and swap over a real mosquitto: retained chunked packages, verification, refusal, atomic install."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from export.install import ModelStore
from export.package import (MANIFEST, Manifest, generate_keypair, load_private_key, load_public_key, package_files,
                            sign_package)
from export.push import CHUNK_BYTES, Announcement, PackageReceiver, package_messages, publish_package
from export.package import verify_package
from export_support import built_package, signing_keys, trained_run
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire.topics import Topics

FED = "test-hapt"


def resigned(src: Path, dst: Path, round_: int, key) -> Path:
    pkg = Path(shutil.copytree(src, dst))
    manifest = Manifest.from_bytes((pkg / MANIFEST).read_bytes())
    sign_package(pkg, Manifest(**{**manifest.__dict__, "round": round_}), key)
    return pkg


def pump(link: MqttLink, receiver: PackageReceiver, until, timeout: float = 10.0) -> None:
    """Feed the gateway's incoming messages to the receiver until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; last error: {receiver.last_error}"
        msg = link.get(timeout=0.1)
        if msg is not None:
            receiver.handle(msg.topic, msg.payload)


@pytest.mark.broker
def test_push_install_swap_and_refuse(mosquitto, data_dir, tmp_path, tmp_path_factory):
    private, public = signing_keys(tmp_path_factory)
    key = load_private_key(private)
    v3 = built_package("hapt", data_dir, tmp_path_factory)
    v4 = resigned(v3, tmp_path / "v4", 4, key)
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    rogue = resigned(v3, tmp_path / "rogue", 5, load_private_key(tmp_path / "rogue.key"))

    with MqttLink(mosquitto.url, LinkOptions(client_id="aggregator")).connect() as agg:
        ann3 = publish_package(agg, FED, v3)
        installed = []
        store = ModelStore(tmp_path / "gateway", load_public_key(public))
        receiver = PackageReceiver(store, FED, on_installed=installed.append,
                                   accept_hand_exported=True)  # these packages are bound to no run
        # the gateway connects after the publication: retained messages deliver the package
        with MqttLink(mosquitto.url, LinkOptions(client_id="c000"), subscriptions=[receiver.subscription]).connect() as gw:
            pump(gw, receiver, lambda: installed)
            assert store.current().package.manifest.round == 3
            assert store.current().package.files == verify_package(v3, None).files

            ann4 = publish_package(agg, FED, v4, previous=ann3)
            pump(gw, receiver, lambda: len(installed) == 2)
            assert store.current().package.manifest.round == 4

            publish_package(agg, FED, rogue, previous=ann4)  # signed, but not by the aggregator's key
            pump(gw, receiver, lambda: receiver.last_error is not None)
            assert "bad signature" in receiver.last_error
            assert store.current().package.manifest.round == 4 and len(installed) == 2

            # a consistent announcement over an altered file of a correctly signed manifest: hashes refuse it
            files = package_files(resigned(v3, tmp_path / "v6", 6, key))
            files["acce.onnx"] = files["acce.onnx"][:-1] + bytes([files["acce.onnx"][-1] ^ 1])
            receiver.last_error = None
            forged = type("Forged", (), {"files": files, "manifest": Manifest.from_bytes(files[MANIFEST])})
            ann, messages = package_messages(FED, forged)
            agg.publish_all(messages, retain=True)
            pump(gw, receiver, lambda: receiver.last_error is not None)
            assert "acce.onnx is altered" in receiver.last_error
            assert store.current().package.manifest.round == 4

        # only the latest version's chunks stay retained on the broker
        late = MqttLink(mosquitto.url, LinkOptions(client_id="late"), subscriptions=[Topics(FED).models_all]).connect()
        with late:
            seen = set()
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                msg = late.get(timeout=0.2)
                if msg is not None and msg.payload:
                    seen.add(msg.topic)
        assert not any(t.startswith(f"fedmekt/{FED}/models/3/") for t in seen)
        assert Topics(FED).models_manifest in seen


def test_announcement_validation():
    ok = Announcement(version=1, chunks=1, bytes=10, sha256="0" * 64)
    assert Announcement.from_bytes(ok.to_bytes()) == ok
    for bad in (b"{", b'{"version": -1}', Announcement(1, 2, 10, "0" * 64).to_bytes(),
                Announcement(1, 1, CHUNK_BYTES + 1, "0" * 64).to_bytes()):
        with pytest.raises(Exception, match="invalid package announcement"):
            Announcement.from_bytes(bad)


@pytest.mark.broker
def test_publisher_every_n_rounds_and_at_the_end(mosquitto, data_dir, tmp_path, tmp_path_factory):
    from export.publisher import PackagePublisher

    run = trained_run("ur_fall", data_dir, tmp_path_factory)
    key = load_private_key(signing_keys(tmp_path_factory)[0])
    with MqttLink(mosquitto.url, LinkOptions(client_id="aggregator")).connect() as agg:
        pub = PackagePublisher(agg, run.model.info.federation, key, tmp_path / "packages", every=2)
        published = [r for r in range(1, 6) if pub.maybe_publish(run.model, r, final=(r == 5)) is not None]
        assert published == [2, 4, 5]
        assert pub.maybe_publish(run.model, 5, final=True) is None  # the final round was already published
        assert sorted(p.name for p in (tmp_path / "packages").iterdir()) == ["r000005"]
    store = ModelStore(tmp_path / "gw", load_public_key(signing_keys(tmp_path_factory)[1]))
    receiver = PackageReceiver(store, run.model.info.federation,  # gateways refuse other federations
                               accept_hand_exported=True)  # a publisher without a run binds none
    with MqttLink(mosquitto.url, LinkOptions(client_id="c001"), subscriptions=[receiver.subscription]).connect() as gw:
        pump(gw, receiver, lambda: store.current() is not None)
    assert store.current().package.manifest.round == 5
