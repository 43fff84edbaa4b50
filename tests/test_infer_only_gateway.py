"""The inference-only gateway: ``fedmekt client --infer-only`` in a process where torch cannot be imported
receives a signed package pushed through the shipped TLS + password + ACL mosquitto, installs it for
the run its signed manifest names, and publishes the predictions of its source.

Also: a command that needs torch, run without it, says so in one line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core_support import tiny_config, tiny_split
from edge_client.inference import StreamingRecognizer
from export.install import ModelStore
from export.package import load_private_key, load_public_key
from export.push import publish_package
from export_support import bound_copy, built_package, signing_keys, trained_run
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.runs import new_run_id
from fedmekt.wire.signing import sign
from fedmekt.wire.topics import Topics
from security_support import connect, start_secure_broker
from wait_support import wait_for

pytestmark = pytest.mark.broker
FED = "test-hapt"  # the federation of export_support's packages
REPO = Path(__file__).resolve().parents[1]
# python without torch: any `import torch` fails as on an inference-only install
NO_TORCH = ("import sys; sys.modules['torch'] = None; from fedmekt_cli.main import main; "
            "sys.argv[0] = 'fedmekt'; sys.exit(main())")


def fedmekt_without_torch(*args: str) -> list[str]:
    return [sys.executable, "-c", NO_TORCH, *args]


def write_samples_csv(data_dir, tmp_path_factory, path: Path, n: int):
    """Writes the first ``n`` acce samples of a HAPT test recording as the gateway's CSV source reads them, and
    returns them as (timestamps, samples)."""
    rec = trained_run("hapt", data_dir, tmp_path_factory).test[2]
    x, t = rec.modalities["acce"][:n], rec.timestamps[:n]
    path.write_text("".join(f"{float(ti)!r}," + ",".join(repr(float(v)) for v in xi) + "\n" for ti, xi in zip(t, x)))
    return t, x


def test_infer_only_gateway_installs_a_pushed_package_over_tls_and_publishes_predictions(
        data_dir, tmp_path, tmp_path_factory):
    private, public = signing_keys(tmp_path_factory)
    key = load_private_key(private)
    run_id = new_run_id(1)
    package = bound_copy(built_package("hapt", data_dir, tmp_path_factory), tmp_path / "pkg", key, run_id, 3)
    csv = tmp_path / "samples.csv"
    t, x = write_samples_csv(data_dir, tmp_path_factory, csv, 400)

    secure = start_secure_broker(tmp_path, users=("gw01",), federation=FED)
    topics = Topics(FED)
    monitor = connect(secure.port, "monitor", secure.passwords["monitor"], ca=secure.ca)
    aggregator = None
    try:
        assert monitor.connected.is_set()
        monitor.subscribe(topics.inference("gw01"))
        monitor.subscribe(topics.status("gw01"))
        # the aggregator's retained signed manifest and package, as a gateway finds them when it (re)connects
        aggregator = MqttLink(f"mqtts://localhost:{secure.port}", LinkOptions(
            client_id="aggregator", username="aggregator", password=secure.passwords["aggregator"],
            ca_file=str(secure.ca))).connect()
        manifest, _ = fedwire.build(tiny_config(federation=FED), tiny_split(), run=run_id, name="lab")
        aggregator.publish_all([(topics.proxy_manifest, sign(key, topics.proxy_manifest, manifest.to_bytes()))],
                               retain=True)
        publish_package(aggregator, FED, package)

        state = tmp_path / "gw"
        proc = subprocess.run(fedmekt_without_torch(
            "client", "--infer-only", "--broker", f"mqtts://localhost:{secure.port}",
            "--credentials", str(secure.folder / "logins" / "gw01" / "credentials.json"), "--client-id", "gw01",
            "--federation", FED, "--public-key", str(public), "--source", f"csv:{csv}", "--modalities", "acce:3",
            "--store", str(state / "store.sqlite")), capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # one line per package installed, naming the run as `fedmekt runs` does (the signed manifest's name)
        said = [line for line in proc.stderr.splitlines() if "installed" in line or "in service" in line]
        assert len(said) == 1 and re.search(rf"model package r000003-[0-9a-f]{{12}} installed and in service: "
                                            rf"run lab \(federation run {run_id}\), round 3, acce encoder$",
                                            said[0]), proc.stderr[-3000:]
        want = StreamingRecognizer.open(package, None, "acce").push(t, x)
        assert f"published {len(want)} prediction(s)" in proc.stdout

        # what reached the broker: the birth (no modalities: never selected for training), then every prediction
        assert monitor.wait_for(topics.status("gw01"), fedwire.Status("online", ()).to_bytes(), timeout=10)

        def predictions() -> list[dict]:
            return [json.loads(p) for tp, p in monitor.drain() if tp == topics.inference("gw01")]

        got = wait_for(lambda: len(p := predictions()) >= len(want) and p, 30, f"{len(want)} predictions")
        assert len(got) == len(want) > 0
        assert [d["label"] for d in got] == [p.label for p in want]
        assert [d["t"] for d in got] == pytest.approx([p.t for p in want])

        installed = ModelStore(state / "models", load_public_key(public)).current()
        assert (installed.package.manifest.run, installed.package.manifest.round) == (run_id, 3)
        assert not (state / "store.sqlite").exists()  # receive-only: no sample store

        # `fedmekt infer` on the installed store publishes through the same TLS login
        infer = subprocess.run(fedmekt_without_torch(
            "infer", "--model", str(state / "models"), "--source", f"csv:{csv}", "--public-key", str(public),
            "--broker", f"mqtts://localhost:{secure.port}", "--client-id", "gw01",
            "--credentials", str(secure.folder / "logins" / "gw01" / "credentials.json")),
            capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert infer.returncode == 0, infer.stderr[-3000:]
        got = wait_for(lambda: len(p := predictions()) >= 2 * len(want) and p, 30,
                       f"{len(want)} more predictions from `fedmekt infer`")
        assert [d["label"] for d in got[len(want):]] == [p.label for p in want]
    finally:
        if aggregator is not None:
            aggregator.close()
        monitor.close()
        secure.broker.stop()


def test_infer_only_without_public_key_is_one_line(tmp_path):
    proc = subprocess.run(fedmekt_without_torch("client", "--infer-only", "--broker", "mqtt://127.0.0.1:9",
                                                "--client-id", "gw01", "--source", "replay:demo"),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("fedmekt client: error: --infer-only needs --public-key (to verify the packages) "
                                   "and a --source (the samples)")


@pytest.mark.parametrize("argv", [["reproduce", "--dataset", "demo", "--seeds", "1"],
                                  ["simulate", "--rounds", "1"]])
def test_command_needing_torch_without_it_says_so_in_one_line(argv, tmp_path):
    proc = subprocess.run(fedmekt_without_torch(*argv), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"fedmekt {argv[0]}: needs the [train] extra (pip install 'fedmekt-edge[train]')"
    assert "Traceback" not in proc.stderr


def test_an_installed_package_has_no_default_data_folder(monkeypatch, tmp_path):
    from fedmekt.errors import UserError
    from sensors import datasets

    site = tmp_path / "lib" / "python3.11" / "site-packages"  # no pyproject.toml: not a source checkout
    monkeypatch.setattr(datasets, "_REPO", site)
    monkeypatch.delenv("FEDMEKT_DATA_DIR", raising=False)
    assert datasets.default_data_root() is None
    with pytest.raises(UserError, match="pass --data-dir or set FEDMEKT_DATA_DIR"):
        datasets.resolve_dir("hapt", None)
    with pytest.raises(UserError, match="in no folder"):
        datasets.resolve_dir("wristband", None)
    assert datasets.resolve_dir("demo", None) == datasets.DEMO_DIR  # the bundled demo still needs no folder
    monkeypatch.setattr(datasets, "_REPO", REPO)
    assert datasets.default_data_root() == REPO.parent / "shared" / "data"


def test_follower_trusts_only_signed_manifests_of_newer_runs(mosquitto, data_dir, tmp_path, tmp_path_factory,
                                                             caplog):
    import threading

    from edge_client.follower import FollowerOptions, InferenceGateway
    from edge_client.inference import ModelService
    from edge_client.sources import open_source
    from fedmekt.transport.broker import free_port

    private, public = signing_keys(tmp_path_factory)
    key, pub = load_private_key(private), load_public_key(public)
    old_run, run_id, newer = new_run_id(1), new_run_id(2), new_run_id(3)
    package = bound_copy(built_package("hapt", data_dir, tmp_path_factory), tmp_path / "pkg", key, run_id, 1)
    topics = Topics(FED)
    agg = MqttLink(mosquitto.url, LinkOptions(client_id="aggregator")).connect()

    def manifest(run: str, signer=key) -> None:
        body = fedwire.build(tiny_config(federation=FED), tiny_split(), run=run)[0].to_bytes()
        agg.publish_all([(topics.proxy_manifest, sign(signer, topics.proxy_manifest, body))], retain=True)

    service = ModelService(tmp_path / "gw" / "models", pub, FED)
    gateway = InferenceGateway(mosquitto.url, FollowerOptions("gw01", FED, service, pub))
    stop = threading.Event()
    live = open_source(f"udp:127.0.0.1:{free_port()}", "gw01", {"acce": 3}, None).source  # never ends
    thread = threading.Thread(target=gateway.run, args=(live, stop), daemon=True)

    def refusals() -> list[str]:
        return [m for m in caplog.messages if m.startswith(f"gw01: ignored message on {topics.proxy_manifest}: ")]

    try:
        publish_package(agg, FED, package)  # before any manifest: held until its run is trusted
        thread.start()
        wait_for(lambda: gateway.link is not None, 20, "the connection")
        assert service.recognizer is None
        manifest(run_id)
        wait_for(lambda: service.recognizer is not None, 20, "the package of the trusted run")
        manifest(old_run)  # an older run's genuine manifest: refused
        manifest(newer, signer=Ed25519PrivateKey.generate())  # a newer run signed with another key: refused
        manifest(newer, signer=None)  # unsigned: refused
        wait_for(lambda: len(refusals()) >= 3, 20, "the gateway to handle the three manifests",
                 detail=lambda: "\n".join(refusals()))
        for reason in ("is older than the run", "bad signature", "unsigned control message"):
            assert any(reason in m for m in refusals()), (reason, refusals())
        assert gateway.run_followed == run_id and service.receiver.trusted_run == run_id
        assert service.recognizer.package.manifest.run == run_id
    finally:
        stop.set()
        thread.join(10)
        agg.close()
    assert not thread.is_alive()


def test_a_gateway_installs_the_package_of_its_device_class_only(data_dir, tmp_path, tmp_path_factory):
    """A mixed fleet publishes one signed package per class under ``models/<class>/``; a homogeneous fleet's
    package sits on ``models/``. ``--device-class small`` installs the small one and refuses a package of another
    class (here the root one, signed for 'large') with one line, over the shipped TLS broker."""
    private, public = signing_keys(tmp_path_factory)
    key = load_private_key(private)
    run_id = new_run_id(1)
    src = built_package("hapt", data_dir, tmp_path_factory)
    small = bound_copy(src, tmp_path / "small", key, run_id, 3, device_class="small")
    large = bound_copy(src, tmp_path / "large", key, run_id, 3, device_class="large")
    root = bound_copy(src, tmp_path / "root", key, run_id, 4, device_class="large")
    csv = tmp_path / "samples.csv"
    write_samples_csv(data_dir, tmp_path_factory, csv, 100)

    secure = start_secure_broker(tmp_path, users=("gw01",), federation=FED)
    topics = Topics(FED)
    aggregator = None
    try:
        aggregator = MqttLink(f"mqtts://localhost:{secure.port}", LinkOptions(
            client_id="aggregator", username="aggregator", password=secure.passwords["aggregator"],
            ca_file=str(secure.ca))).connect()
        manifest, _ = fedwire.build(tiny_config(federation=FED, fleet="mixed"), tiny_split(), run=run_id)
        aggregator.publish_all([(topics.proxy_manifest, sign(key, topics.proxy_manifest, manifest.to_bytes()))],
                               retain=True)
        publish_package(aggregator, FED, root)
        publish_package(aggregator, FED, large, device_class="large")
        publish_package(aggregator, FED, small, device_class="small")

        state = tmp_path / "gw"
        proc = subprocess.run(fedmekt_without_torch(
            "client", "--infer-only", "--device-class", "small", "--broker", f"mqtts://localhost:{secure.port}",
            "--credentials", str(secure.folder / "logins" / "gw01" / "credentials.json"), "--client-id", "gw01",
            "--federation", FED, "--public-key", str(public), "--source", f"csv:{csv}", "--modalities", "acce:3",
            "--store", str(state / "store.sqlite")), capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        installed = ModelStore(state / "models", load_public_key(public)).current()
        assert installed.package.manifest.device_class == "small"
        assert (installed.package.manifest.run, installed.package.manifest.round) == (run_id, 3)
        assert ("refused model package: package for device class 'large'; this gateway is 'small' "
                "(--device-class); the current model stays in service") in proc.stderr
        assert re.search(rf"installed and in service: run {run_id}, round 3, class small, acce encoder$",
                         proc.stderr, re.M), proc.stderr[-3000:]   # a manifest without a name: the id alone
    finally:
        if aggregator is not None:
            aggregator.close()
        secure.broker.stop()
