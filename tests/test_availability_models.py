"""crash_loop: an installed model altered on disk never crashes the gateway (real mosquitto).

With an earlier verified version the gateway puts it back in service; without one it trains and serves
without a model until a valid package arrives. Either way one log line says so.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from edge_client.inference import ModelService
from export.install import CURRENT, VERSIONS, ModelStore
from export.package import MANIFEST, Manifest, load_private_key, load_public_key, sign_package
from export.push import publish_package
from export_support import built_package, signing_keys
from fault_ledger import record
from federation_harness import ProcessFederation
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from test_infer_service import pump

pytestmark = pytest.mark.broker


def _versions(src: Path, tmp: Path, private: Path, rounds: tuple[int, ...]) -> list[Path]:
    """Copies of the signed package ``src`` re-signed as the given rounds."""
    manifest = Manifest.from_bytes((src / MANIFEST).read_bytes())
    out = []
    for r in rounds:
        path = Path(shutil.copytree(src, tmp / f"v{r}"))
        sign_package(path, Manifest(**{**manifest.__dict__, "round": r}), load_private_key(private))
        out.append(path)
    return out


def _alter_current(store: ModelStore) -> str:
    """Flip one byte of an ONNX file of the package in service (what an intruder or a bad disk does)."""
    name = (store.root / CURRENT).read_text().strip()
    onnx = sorted((store.root / VERSIONS / name).glob("*.onnx"))[0]
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    return name


@pytest.mark.slow
def test_crash_loop_gateway_falls_back_to_the_previous_verified_model(data_dir, tmp_path, tmp_path_factory):
    private, public = signing_keys(tmp_path_factory)
    v3, v4 = _versions(built_package("hapt", data_dir, tmp_path_factory), tmp_path / "pkgs", private, (3, 4))
    fed = ProcessFederation(tmp_path, rounds=1, clients=(1, 1, 1), per_round=3)
    try:
        victim = fed.client_ids[0]
        store = ModelStore(fed.store(victim).parent / "models", load_public_key(public))
        store.install(v3)
        store.install(v4)
        broken = _alter_current(store)
        for cid in fed.client_ids:
            extra = ("--public-key", str(public)) if cid == victim else ()
            fed.start_client(cid, True, *extra)
        fed.start_aggregator("--signing-key", str(private), "--package-every", "0")
        fed.run_to_end(timeout=240)  # the gateway trained its round and exited normally
        log = fed.log(victim)
    finally:
        fed.close()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("fell back to the previous verified version") == 1, log[-3000:]
    assert broken in log and re.search(r"model package r000003-[0-9a-f]{12} in service: run \(none: hand-exported\), "
                                       r"round 3, ", log), log[-3000:]
    record("fault", "crash_loop: altered installed model, earlier version kept", tried=1, handled=1)


def test_crash_loop_without_an_earlier_version_runs_without_a_model(mosquitto, data_dir, tmp_path,
                                                                    tmp_path_factory, caplog):
    private, public = signing_keys(tmp_path_factory)
    v3, v4 = _versions(built_package("hapt", data_dir, tmp_path_factory), tmp_path / "pkgs", private, (3, 4))
    federation = Manifest.from_bytes((v3 / MANIFEST).read_bytes()).federation
    store = ModelStore(tmp_path / "models", load_public_key(public))
    store.install(v3)
    _alter_current(store)
    with caplog.at_level(logging.ERROR):
        service = ModelService(tmp_path / "models", load_public_key(public), federation,  # must not raise
                               accept_hand_exported=True)  # the packages here are bound to no run
    assert service.recognizer is None
    assert [r.message for r in caplog.records if "running without a model" in r.message], caplog.text
    with MqttLink(mosquitto.url, LinkOptions(client_id="aggregator")).connect() as agg, \
            MqttLink(mosquitto.url, LinkOptions(client_id="c000"),
                     subscriptions=[service.subscription]).connect() as gw:
        publish_package(agg, federation, v4)
        pump(gw, service, lambda: service.recognizer is not None)  # a valid package still goes into service
    assert service.recognizer.package.manifest.round == 4
    record("fault", "crash_loop: altered only model, runs without one", tried=1, handled=1)


@pytest.mark.broker
def test_a_training_client_says_what_it_waits_for(federation):
    """No aggregator serves the client's federation (a typo, or not started yet): its log names what it awaits."""
    fed = federation(rounds=1, clients=(1, 0, 0), per_round=1)
    fed.start_client(fed.client_ids[0])
    fed.wait_until(lambda: "waiting for the manifest of federation" in fed.log(fed.client_ids[0]), 120,
                   "the client to log what it waits for")
    assert fed.procs[fed.client_ids[0]].poll() is None   # it keeps waiting, it does not exit
