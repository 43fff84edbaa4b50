"""Signed model packages pushed by a running aggregator to running gateways through a real mosquitto.

``fedmekt aggregator --signing-key`` signs its control messages and publishes a package after every
``--package-every`` rounds and at the end; ``fedmekt client --public-key`` acts only on control
messages and installs only packages that verify against its key and refuses the rest, keeping no
(or its old) model; with ``--infer`` it classifies its live samples
with the installed model and publishes the predictions. An upload still missing chunks when its
round closes is dropped and reported. A package before the last round is built on a worker thread: the rounds
go on meanwhile, and Ctrl-C ends the aggregator at once without it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from export.install import ModelStore
from export.package import MANIFEST, Manifest, generate_keypair, load_public_key
from export.push import Announcement, publish_package
from export_support import built_package, signing_keys
from federation_harness import ProcessFederation
from fedmekt.config import load_config
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire.topics import Topics
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import MAX_HEADER, WireLimits, encode
from sensors.datasets import load_dataset
from sensors.splits import make_split


@pytest.fixture
def fed(tmp_path):
    federation = ProcessFederation(tmp_path, rounds=2, clients=(1, 1, 1), per_round=3, round_timeout=60.0,
                                   federation="push")
    yield federation
    federation.close()


@pytest.mark.slow
@pytest.mark.broker
def test_aggregator_pushes_signed_package_and_only_the_matching_key_installs_it(fed, tmp_path):
    generate_keypair(tmp_path / "agg.key", tmp_path / "agg.pub")
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    wrong = fed.client_ids[-1]
    for cid in fed.client_ids:
        pub = tmp_path / ("other.pub" if cid == wrong else "agg.pub")
        fed.start_client(cid, True, "--public-key", str(pub))
    # the gateway with another key trusts none of the aggregator's messages, the liveness challenge included: it
    # never proves it is alive, so the run starts with the other two (the last of the repeated --wait-clients)
    fed.start_aggregator("--signing-key", str(tmp_path / "agg.key"), "--package-every", "1", "--quorum", "0.6",
                         "--wait-clients", "2")
    assert fed.wait_exit("aggregator", 300) == 0, fed.log("aggregator")[-3000:]
    for cid in fed.client_ids[:-1]:
        assert fed.wait_exit(cid, 60) == 0, fed.log(cid)[-3000:]
    assert fed.procs[wrong].poll() is None  # it ignored the unverifiable "done" too, and keeps waiting
    fed.kill(wrong)
    assert "proxy/manifest: bad signature" in fed.log(wrong)

    published = [t for _, t, p in fed.recorder.snapshot() if t == "fedmekt/push/models/manifest" and p]
    assert len(published) == 2  # after round 0 (1 completed) and round 1 (2 completed); the end adds none
    for cid in fed.client_ids[:-1]:
        installed = ModelStore(fed.store(cid).parent / "models", load_public_key(tmp_path / "agg.pub")).current()
        assert installed is not None, fed.log(cid)[-2000:]
        assert installed.package.manifest.round == 2 and installed.package.manifest.federation == "push"
        assert "refused model package" not in fed.log(cid)
    store = ModelStore(fed.store(wrong).parent / "models", load_public_key(tmp_path / "other.pub"))
    assert store.current() is None
    assert not any((store.root / "versions").iterdir())
    assert "refused model package" in fed.log(wrong)


def test_upload_missing_chunks_at_round_close_is_dropped_and_reported():
    limits = WireLimits(chunk_size=4 * MAX_HEADER)
    frames = encode({"x": np.zeros(4 * MAX_HEADER, np.float32)}, federation="t", round_=3, sender="c001",
                    kind="upload", modalities=("a",), limits=limits)
    assert len(frames) > 2
    r = Reassembler(limits)
    assert r.add(frames[0]) is None and r.add(frames[2]) is None
    assert r.forget_round(2) == []  # a later round's message stays
    assert r.forget_round(3) == [("c001", 2, len(frames))]
    assert r.pending_bytes == 0


@pytest.mark.slow
@pytest.mark.broker
def test_client_with_infer_publishes_predictions_of_the_installed_package(mosquitto, data_dir, tmp_path,
                                                                          tmp_path_factory):
    """``fedmekt client --public-key --infer``: a retained package is installed, then every replayed raw
    batch is classified on the device and the predictions appear on ``clients/<id>/inference``."""
    package = built_package("hapt", data_dir, tmp_path_factory)
    _, public = signing_keys(tmp_path_factory)
    manifest = Manifest.from_bytes((package / MANIFEST).read_bytes())
    federation, labels = manifest.federation, set(manifest.label_names)
    topic = Topics(federation).inference("c000")
    with MqttLink(mosquitto.url, LinkOptions(client_id="aggregator")).connect() as agg, \
            MqttLink(mosquitto.url, LinkOptions(client_id="watcher"), subscriptions=[topic]).connect() as watcher:
        publish_package(agg, federation, package)
        proc = subprocess.Popen([sys.executable, "-m", "fedmekt_cli", "client", "--broker", mosquitto.url,
                                 "--client-id", "c000", "--federation", federation, "--store",
                                 str(tmp_path / "gw" / "store.sqlite"), "--source", "replay:hapt",
                                 "--data-dir", str(data_dir), "--speed", "20", "--public-key", str(public),
                                 "--infer", "--accept-hand-exported"],  # the package is bound to no run
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            got, deadline = [], time.monotonic() + 120
            while len(got) < 20 and time.monotonic() < deadline and proc.poll() is None:
                msg = watcher.get(timeout=0.5)
                if msg is not None:
                    got.append(json.loads(msg.payload))
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0]
    assert len(got) >= 20, out[-3000:]
    assert all(p["label"] in labels and 0.0 <= p["confidence"] <= 1.0 for p in got)
    assert [p["t"] for p in got] == sorted(p["t"] for p in got)  # one stream, in order
    assert ModelStore(tmp_path / "gw" / "models", load_public_key(public)).current() is not None


def _packaging_every_round(tmp_path, rounds: int, federation: str, deploy_rounds: int):
    """Three gateways and an aggregator signing a package after every round, whose deployed model fine-tunes
    ``deploy_rounds`` rounds (the tiny config's 2 take well under a round): the federation and the aggregator."""
    fed = ProcessFederation(tmp_path, rounds=rounds, clients=(1, 1, 1), per_round=3, round_timeout=60.0,
                            federation=federation)
    try:
        fed.config.write_text(fed.config.read_text().replace("deploy_rounds = 2\n",
                                                             f"deploy_rounds = {deploy_rounds}\n"))
        generate_keypair(tmp_path / "agg.key", tmp_path / "agg.pub")
        for cid in fed.client_ids:
            fed.start_client(cid, True, "--public-key", str(tmp_path / "agg.pub"))
        return fed, fed.start_aggregator("--signing-key", str(tmp_path / "agg.key"), "--package-every", "1")
    except BaseException:
        fed.close()
        raise


@pytest.mark.slow
@pytest.mark.broker
def test_rounds_go_on_while_a_package_is_built_and_packages_go_out_in_round_order(tmp_path):
    """A package before the last round is built on the aggregator's worker thread from a snapshot: with a deployed
    model's fine-tuning many times longer than a round (``deploy_rounds`` 10 against 2), the second round's metrics
    row goes out before the first round's package, which a round thread that built it would have published first;
    the packages still go out in round order, and the run ends once the last is out."""
    fed, _ = _packaging_every_round(tmp_path, rounds=2, federation="pkgbg", deploy_rounds=10)
    try:
        assert fed.wait_exit("aggregator", 400) == 0, fed.log("aggregator")[-3000:]
        for cid in fed.client_ids:
            assert fed.wait_exit(cid, 60) == 0, fed.log(cid)[-3000:]
        events = []   # ("row", round index) / ("package", version), in the order the broker delivered them
        for _, topic, payload in fed.recorder.snapshot():
            if topic == "fedmekt/pkgbg/metrics" and payload and "round" in json.loads(payload):
                events.append(("row", json.loads(payload)["round"]))
            elif topic == "fedmekt/pkgbg/models/manifest" and payload:
                events.append(("package", Announcement.from_bytes(payload).version))
        assert [e for e in events if e[0] == "package"] == [("package", 1), ("package", 2)], events
        assert events.index(("row", 1)) < events.index(("package", 1)), events
        for cid in fed.client_ids:
            installed = ModelStore(fed.store(cid).parent / "models", load_public_key(tmp_path / "agg.pub")).current()
            assert installed is not None and installed.package.manifest.round == 2, fed.log(cid)[-2000:]
        # the last package was derived on the worker from a snapshot, and the final figures score that very model:
        # the same as the in-process run's
        cfg = load_config(fed.config)
        split = make_split(load_dataset(cfg.dataset), cfg.pair, scheme=cfg.partition, seed=cfg.seed,
                           clients=cfg.clients)
        ref = run_inprocess(cfg, split, progress=False).final
        final = json.loads((fed.out / "final.jsonl").read_text().splitlines()[-1])
        keys = [k for k in ref if k.startswith(("probe_f1", "deployed_"))]
        assert {k: final[k] for k in keys} == {k: ref[k] for k in keys}
    finally:
        fed.close()


@pytest.mark.slow
@pytest.mark.broker
def test_an_interrupted_aggregator_exits_at_once_and_publishes_no_package_still_being_built(tmp_path):
    """Ctrl-C while the worker fine-tunes a package (``deploy_rounds`` 400: minutes): the aggregator ends at once
    (the worker keeps no process alive) and that package never goes out (none after the link closed)."""
    fed, agg = _packaging_every_round(tmp_path, rounds=3, federation="pkgint", deploy_rounds=400)
    try:
        fed.wait_announced(1)   # the package after round 1 was queued before round 2 opened
        agg.send_signal(signal.SIGINT)
        assert fed.wait_exit("aggregator", 60) == 130, fed.log("aggregator")[-3000:]
        assert "interrupted" in fed.log("aggregator")
        assert not [t for _, t, p in fed.recorder.snapshot() if t == "fedmekt/pkgint/models/manifest" and p]
    finally:
        fed.close()
