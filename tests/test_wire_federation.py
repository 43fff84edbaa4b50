"""Federation manifest, proxy set transfer, provisioning bundle and the JSON control messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core_support import tiny_config, tiny_split
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import WireError, WireLimits


def _built(algorithm="fedmekt-c"):
    cfg, split = tiny_config(algorithm), tiny_split()
    manifest, frames = fedwire.build(cfg, split, WireLimits(chunk_size=16 * 1024), run="r1")
    return cfg, split, manifest, frames


def test_proxy_set_reassembles_bit_exact():
    cfg, split, manifest, frames = _built()
    rx = fedwire.ProxyReceiver(fedwire.FederationManifest.from_bytes(manifest.to_bytes()))
    got = [rx.add(f) for f in reversed(frames)][-1]
    for m in cfg.pair:
        np.testing.assert_array_equal(got.modalities[m], split.proxy.modalities[m])
    np.testing.assert_array_equal(got.segments, split.proxy.segments)
    assert (got.labels == -1).all()  # the proxy set travels unlabelled
    assert fedwire.FederationManifest.from_bytes(manifest.to_bytes()).federation_config() == cfg


def test_baselines_need_no_proxy_frames():
    _, _, manifest, frames = _built("mmfedavg")
    assert frames == [] and manifest.proxy_sha256 == ""


def test_bundle_roundtrip_and_tampering(tmp_path):
    _, split, manifest, frames = _built()
    path = tmp_path / "bundle.safetensors"
    fedwire.save_bundle(path, manifest, frames)
    loaded, proxy = fedwire.load_bundle(path)
    assert loaded.run == "r1" and loaded.proxy_sha256 == manifest.proxy_sha256
    np.testing.assert_array_equal(proxy.modalities["a"], split.proxy.modalities["a"])
    other = fedwire.build(tiny_config(), tiny_split(seed=1), run="r2")[1]
    fedwire.save_bundle(path, manifest, other)  # frames of another proxy set under this manifest
    with pytest.raises(WireError):
        fedwire.load_bundle(path)
    path.write_bytes(b"not a bundle")
    with pytest.raises(WireError):
        fedwire.load_bundle(path)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("config"), lambda d: d.update(v=2), lambda d: d.update(segments=[[5, 2]]),
    lambda d: d.update(channels={"a": -1}), lambda d: d.update(run=7), lambda d: d.update(proxy_rows="x"),
])
def test_bad_manifests_are_rejected(mutate):
    _, _, manifest, _ = _built()
    d = json.loads(manifest.to_bytes())
    mutate(d)
    with pytest.raises(WireError):
        fedwire.FederationManifest.from_bytes(json.dumps(d).encode())


def test_manifest_carries_the_run_name_the_operator_sees_and_reads_one_without_it():
    """The run's folder name (``fedmekt runs``' id) travels in the signed manifest beside the wire run id (issue 23:
    one id everywhere); a manifest of an earlier release, without it, still reads; a hostile name is refused."""
    cfg, split = tiny_config(), tiny_split()
    manifest = fedwire.build(cfg, split, run="e3-0a1b2c3d", name="lab-3")[0]
    got = fedwire.FederationManifest.from_bytes(manifest.to_bytes())
    assert (got.name, got.run) == ("lab-3", "e3-0a1b2c3d")
    older = json.loads(manifest.to_bytes())
    del older["name"]
    assert fedwire.FederationManifest.from_bytes(json.dumps(older).encode()).name == ""
    for hostile in ("lab\x1b]0;owned\x07", "c000: online\nlab", "../../etc", "a b", "x" * 129, 7, ["lab"]):
        d = {**older, "name": hostile}
        with pytest.raises(WireError, match="wrong types"):
            fedwire.FederationManifest.from_bytes(json.dumps(d).encode())
    with pytest.raises(ValueError, match="letters, digits"):   # an aggregator never publishes what nobody reads
        fedwire.build(cfg, split, run="e3-0a1b2c3d", name="my lab")


def test_manifest_with_an_unrunnable_config_is_rejected():
    _, _, manifest, _ = _built()
    d = json.loads(manifest.to_bytes())
    d["config"]["algorithm"] = "fedsteal"
    with pytest.raises(WireError, match="config"):
        fedwire.FederationManifest.from_bytes(json.dumps(d).encode()).federation_config()


def test_announcements_and_status_validate():
    plan = {"round": 2, "selected": ["c000"], "proxy_windows": [0, 5], "window": 8, "algorithm": "fedmekt-c"}
    ann = fedwire.Announcement.from_bytes(fedwire.Announcement("t", plan, 60.0, run="r1").to_bytes())
    assert ann.round_plan().round == 2 and ann.run == "r1"
    for bad in (b"", b"[]", b"{", json.dumps({"federation": "t"}).encode(),
                fedwire.Announcement("t", {**plan, "round": -1}, 60.0).to_bytes(),
                fedwire.Announcement("t", plan, -1.0).to_bytes(), fedwire.Announcement("t", plan, math.nan).to_bytes(),
                fedwire.Announcement("t", plan, 60.0).to_bytes().replace(b'"v":2', b'"v":1')):
        with pytest.raises(WireError):
            fedwire.Announcement.from_bytes(bad).round_plan()
    assert fedwire.Status.from_bytes(fedwire.Status("online", ("a",)).to_bytes()).modalities == ("a",)
    for bad in (b'{"state": "hacked"}', b'{"state": "online", "modalities": "a"}', b"\xff"):
        with pytest.raises(WireError):
            fedwire.Status.from_bytes(bad)
    nonce = "ab" * 16
    assert fedwire.Status.from_bytes(fedwire.Status("online", ("a",), proof=nonce).to_bytes()).proof == nonce
    for proof in ("x" * 8, "a" * 33, 5):  # not hex, too long, not a string
        with pytest.raises(WireError):
            fedwire.Status.from_bytes(json.dumps({"state": "online", "modalities": [], "proof": proof}).encode())
    assert fedwire.LivenessChallenge.from_bytes(fedwire.LivenessChallenge("t", nonce).to_bytes()).nonce == nonce
    for bad in (fedwire.LivenessChallenge("t", "ab").to_bytes(), fedwire.LivenessChallenge("t/x", nonce).to_bytes(),
                fedwire.LivenessChallenge("t", nonce).to_bytes().replace(b'"v":1', b'"v":2'), b"[]"):
        with pytest.raises(WireError):
            fedwire.LivenessChallenge.from_bytes(bad)
    assert fedwire.LivenessChallenge.from_bytes(fedwire.LivenessChallenge("t", nonce, 2.5).to_bytes()).spread == 2.5
    for spread in (-1, "2", True, None, 601, 10**400):  # negative, not a number, beyond SPREAD_MAX_S
        with pytest.raises(WireError):
            fedwire.LivenessChallenge.from_bytes(json.dumps({"v": 1, "federation": "t", "nonce": nonce,
                                                              "spread": spread}).encode())
    for spread in (b"NaN", b"Infinity"):
        with pytest.raises(WireError):
            fedwire.LivenessChallenge.from_bytes(b'{"v":1,"federation":"t","nonce":"%s","spread":%s}'
                                                 % (nonce.encode(), spread))
