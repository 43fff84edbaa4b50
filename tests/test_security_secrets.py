"""Secrets and diagnostics of a secured deployment.

* secrets: the CA key and the clear passwords stay in the operator's folder, the broker's
  folder holds only what mosquitto serves, hashes use far more than mosquitto's 101 PBKDF2
  iterations, the CLI reads a login's credentials.json itself, provisioning runs from the
  installed package, and gateway stores are private (0600 / 0700).
* tls: a host-name mismatch, an unknown CA and a plain-TCP port are reported as such, not as
  "cannot reach the broker".
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedmekt.errors import UserError
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.provisioning.passwords import ITERATIONS
from fedmekt.wire.topics import Topics
from security_support import SecureBroker, provision, start_secure_broker
from sensors.recording import SampleBatch
from sensors.store import SampleStore

FEDMEKT = Path(sys.executable).with_name("fedmekt")
BROKER_FILES = {"ca.crt", "server.crt", "server.key", "passwd", "acl", "fedmekt.conf"}


def fedmekt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(FEDMEKT)] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    env = {k: v for k, v in os.environ.items() if k != "FEDMEKT_MQTT_PASSWORD"}
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> SecureBroker:
    # every interface: 127.0.0.2 (loopback, not in the certificate) must reach it for the host-name test
    sb = start_secure_broker(tmp_path_factory.mktemp("secrets"), ("c000",), bind="all")
    yield sb
    sb.broker.stop()


def test_secrets_stay_in_the_operator_folder(secure):
    broker = secure.broker_dir
    assert {p.name for p in broker.iterdir()} == BROKER_FILES
    for path in broker.iterdir():
        text = path.read_text()
        assert "PRIVATE KEY" not in text or path.name == "server.key", path
        for user, password in secure.passwords.items():
            assert password not in text, f"{user}'s clear password is in {path}"
    conf = (broker / "fedmekt.conf").read_text()
    assert str(secure.folder / "ca.key") not in conf and str(broker.resolve()) in conf
    assert (secure.folder / "ca.key").exists() and mode(secure.folder) == 0o700
    assert mode(secure.folder / "ca.key") == 0o600
    for name in ("server.key", "passwd", "acl"):
        assert mode(broker / name) == 0o600, name
    creds = secure.folder / "logins" / "c000" / "credentials.json"
    assert mode(creds) == 0o600 and mode(creds.parent) == 0o700
    assert json.loads(creds.read_text())["federations"] == ["demo"]


def test_secrets_password_hashes_use_many_more_iterations_than_mosquittos_101(secure):
    lines = (secure.broker_dir / "passwd").read_text().splitlines()
    assert len(lines) == len(secure.passwords)
    schemes = [line.split(":", 1)[1].split("$") for line in lines]  # user:$7$<iterations>$<salt>$<hash>
    assert all(len(p) == 5 and p[1] == "7" for p in schemes), lines
    assert {int(p[2]) for p in schemes} == {ITERATIONS} and ITERATIONS >= 10_000
    # and the broker accepts them: every login of the fixture connected with them (see the CLI test below)


def test_secrets_cli_reads_a_credentials_file(secure, tmp_path):
    creds = secure.folder / "logins" / "monitor" / "credentials.json"
    url = f"mqtts://localhost:{secure.port}"
    done = fedmekt("status", "--broker", url, "--credentials", str(creds), "--wait", "0.5", cwd=tmp_path)
    assert done.returncode != 2 and not done.stderr.strip(), done.stderr  # connected: 1 = nothing running
    assert "federation demo" in done.stdout
    broken = tmp_path / "credentials.json"
    for content in ("{not json", json.dumps({"username": "monitor"}), json.dumps(["monitor", "pw"])):
        broken.write_text(content)
        bad = fedmekt("status", "--broker", url, "--credentials", str(broken), cwd=tmp_path)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.strip().startswith("fedmekt status: error: --credentials"), bad.stderr
    missing = fedmekt("status", "--broker", url, "--credentials", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 2 and "credentials file not found" in missing.stderr
    device = secure.folder / "logins" / "c000" / "credentials.json"
    samples = tmp_path / "samples.csv"
    samples.write_text("".join(f"{i * 0.02},0.1,0.2,0.3\n" for i in range(50)))
    other = fedmekt("client", "--broker", url, "--credentials", str(device), "--client-id", "c001",
                    "--source", f"csv:{samples}", "--modalities", "acce:3", cwd=tmp_path)
    assert other.returncode == 2 and "a device's client id is its login name" in other.stderr, other.stderr


def test_secrets_provision_runs_from_the_installed_package_outside_a_checkout(tmp_path):
    op = tmp_path / "operator"
    done = fedmekt("provision", "init", str(op), "--host", "broker.example.org", "--broker-dir",
                   str(tmp_path / "etc-mosquitto-fedmekt"), "--port", "18883", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    added = fedmekt("provision", "add", str(op), "c007", "--federation", "lab", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    conf = (tmp_path / "etc-mosquitto-fedmekt" / "fedmekt.conf").read_text()
    assert "listener 18883\n" in conf and "acl_file " + str(tmp_path / "etc-mosquitto-fedmekt" / "acl") in conf
    acl = (tmp_path / "etc-mosquitto-fedmekt" / "acl").read_text()
    assert "user c007\ntopic write fedmekt/lab/clients/c007/status\n" in acl and "\npattern " not in acl
    creds = json.loads((op / "logins" / "c007" / "credentials.json").read_text())
    assert creds["broker"] == "mqtts://broker.example.org:18883" and creds["username"] == "c007"
    again = fedmekt("provision", "init", str(op), "--host", "x", cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    same = fedmekt("provision", "init", str(tmp_path / "o2"), "--host", "x", "--broker-dir", str(tmp_path / "o2"),
                   cwd=tmp_path)
    assert same.returncode == 2 and "must not be the operator's folder" in same.stderr


def test_secrets_shipped_acl_example_is_what_provisioning_renders():
    from fedmekt.provisioning.acl import Login, render_acl

    shipped = (Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl").read_text()
    example = [Login("aggregator", "aggregator", ("demo",)), Login("monitor", "monitor"), Login("c000", "device", ("demo",)),
               Login("janitor", "janitor")]
    assert shipped == render_acl(example)


def test_secrets_gateway_store_is_private(tmp_path):
    path = tmp_path / "gateway" / "store.sqlite"
    store = SampleStore(path)
    batch = SampleBatch(timestamps=np.arange(4, dtype=np.float64), labels=np.zeros(4, dtype=np.int64),
                        modalities={"acce": np.ones((4, 3), dtype=np.float32)}, unit="u0")
    store.append(batch)
    assert mode(path.parent) == 0o700
    for f in path.parent.iterdir():  # the database and its -wal / -shm files
        assert mode(f) == 0o600, f
    store.close()
    path.chmod(0o644)  # a store from an older version is tightened when opened
    SampleStore(path).close()
    assert mode(path) == 0o600


# -- TLS diagnostics ---------------------------------------------------------------------------
def _connect(url: str, ca: Path | None, sb: SecureBroker | None = None) -> str:
    user = "c000"
    opts = LinkOptions(client_id=user, username=user, password=sb.passwords[user] if sb else "x",
                       ca_file=str(ca) if ca else None)
    with pytest.raises(UserError) as info:
        MqttLink(url, opts).connect(timeout=10)
    return str(info.value)


def test_tls_host_name_mismatch_is_reported_as_such(secure):
    # 127.0.0.2 reaches the same listener, but the certificate names only localhost and 127.0.0.1
    msg = _connect(f"mqtts://127.0.0.2:{secure.port}", secure.ca, secure)
    assert "is not valid for the name '127.0.0.2'" in msg and "mismatch" in msg and "cannot reach" not in msg, msg


def test_tls_unknown_ca_is_reported_as_such(secure, tmp_path):
    other = provision.init(tmp_path / "other", ("localhost",))
    msg = _connect(f"mqtts://localhost:{secure.port}", other.operator / "ca.crt", secure)
    assert "not signed by a trusted CA" in msg and "--ca-file" in msg, msg


def test_tls_to_a_plain_tcp_listener_is_reported_as_such(mosquitto, secure):
    msg = _connect(f"mqtts://127.0.0.1:{mosquitto.port}", secure.ca)
    assert "TLS handshake" in msg and "plain-TCP listener" in msg, msg


def test_tls_right_ca_and_name_still_connect(secure):
    opts = LinkOptions(client_id="c000", username="c000", password=secure.passwords["c000"], ca_file=str(secure.ca))
    with MqttLink(f"mqtts://localhost:{secure.port}", opts).connect(timeout=10) as link:
        link.publish_all([(Topics("demo").status("c000"), b"online")])


def test_secrets_gateway_model_state_folder_is_private(tmp_path):
    pytest.importorskip("torch")
    from edge_client.training import LocalTrainer
    from fedmekt.config import FederationConfig

    store = SampleStore(tmp_path / "gw" / "store.sqlite")
    (tmp_path / "state").mkdir(mode=0o755)  # an existing folder is tightened too
    cfg = FederationConfig(clients=(1, 1, 1), per_round=1, rounds=1, algorithm="mmfedavg")
    LocalTrainer(cfg, "c000", ("acce",), {"acce": 3, "gyro": 3}, None, store, tmp_path / "state")
    assert mode(tmp_path / "state") == 0o700
    store.close()
