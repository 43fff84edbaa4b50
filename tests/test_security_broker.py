"""The shipped broker configuration (deploy/mosquitto) enforces authentication, TLS and the topic ACL.

Every test talks to a real mosquitto started with the config that ``fedmekt provision``
renders, using real paho-mqtt 2.x clients. Denied publishes are observed from the
receiving side: a monitor (read-all) and the aggregator subscribe, and an allowed
"sentinel" message sent right after the denied one proves delivery had its chance.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fedmekt.wire.topics import Topics
from fault_ledger import record
from fedmekt.transport.broker import free_port
from security_support import Probe, SecureBroker, connect, provision, start_rendered_broker, start_secure_broker

pytestmark = pytest.mark.broker
FEDMEKT = Path(sys.executable).with_name("fedmekt")
T = Topics("demo")


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> SecureBroker:
    sb = start_secure_broker(tmp_path_factory.mktemp("secure"))
    yield sb
    sb.broker.stop()


def login(sb: SecureBroker, user: str, **kw) -> Probe:
    kw.setdefault("client_id", user)  # as the real clients do: client id == username
    probe = connect(sb.port, user, sb.passwords[user], ca=sb.ca, **kw)
    assert probe.connected.is_set(), f"{user} could not connect: {probe.connack}"
    return probe


@pytest.fixture
def watchers(secure):
    """The monitor (reads everything) and the aggregator (reads client topics), both on fedmekt/#."""
    monitor, agg = login(secure, "monitor"), login(secure, "aggregator")
    for p in (monitor, agg):
        p.subscribe("fedmekt/#")
    yield monitor, agg
    monitor.close()
    agg.close()


def test_provisioned_users_connect_over_tls(secure):
    for user in ("c000", "aggregator", "monitor"):
        login(secure, user).close()


@pytest.mark.parametrize("user,password", [("c000", "wrong-password"), ("c000", ""), ("intruder", "x"),
                                           (None, None)])
def test_wrong_credentials_are_refused(secure, user, password):
    probe = connect(secure.port, user, password, ca=secure.ca)
    assert not probe.connected.is_set()
    assert probe.connack is not None and probe.connack != 0, probe.connack
    probe.close()
    record("attack", "wrong password / unknown user / anonymous")


def test_plain_tcp_is_refused_where_tls_is_required(secure):
    probe = connect(secure.port, "c000", secure.passwords["c000"], ca=None, timeout=3)
    assert not probe.connected.is_set()
    probe.close()
    record("attack", "plain TCP to the TLS listener")


def test_device_refuses_a_broker_signed_by_another_ca(secure, tmp_path):
    other = tmp_path / "other"
    provision.init(other, ("localhost",), port=secure.port)
    probe = connect(secure.port, "c000", secure.passwords["c000"], ca=other / "ca.crt")
    assert not probe.connected.is_set()
    assert "CERTIFICATE_VERIFY_FAILED" in str(probe.connack), probe.connack
    record("attack", "impostor broker (certificate from another CA)")


def _denied(secure, watchers, user: str, topics: list[str], sentinel: str, protocol=mqtt.MQTTv311) -> set[str]:
    """``user`` publishes to each topic then to ``sentinel``; returns the topics the watchers got."""
    device = login(secure, user, protocol=protocol)
    for topic in topics:
        device.publish(topic, b"forged:" + topic.encode())
    device.publish(sentinel, b"sentinel")
    got = set()
    for w in watchers:
        assert w.wait_for(sentinel, b"sentinel"), "allowed sentinel never arrived"
        got |= {t for t, _ in w.drain()}
    device.close()
    return got


def test_device_cannot_publish_to_another_devices_topics(secure, watchers):
    forged = [T.upload_chunk("c001", 3, 0), T.status("c001"), T.inference("c001"),
              "fedmekt/demo/clients/c001/anything"]
    got = _denied(secure, watchers, "c000", forged, T.upload_chunk("c000", 3, 0))
    assert not got & set(forged)
    record("attack", "publish to another device's topics", tried=len(forged), handled=len(forged))


def test_device_cannot_publish_rounds_global_proxy_models_or_metrics(secure, watchers):
    forged = [T.rounds, T.global_chunk(3, 0), T.proxy_manifest, T.proxy_chunk(0), T.models_manifest,
              T.model_chunk(1, 0), T.metrics, "fedmekt/other-fed/rounds", "$SYS/forged"]
    got = _denied(secure, watchers, "c000", forged, T.status("c000"))
    assert not got & set(forged)
    record("attack", "device publishes rounds/global/proxy/models/metrics", tried=len(forged), handled=len(forged))


def test_mqtt5_device_gets_not_authorized_puback(secure, watchers):
    device = login(secure, "c000", protocol=mqtt.MQTTv5)
    info = device.client.publish(T.rounds, b"forged", qos=1)
    info.wait_for_publish(5)
    assert str(device.acks[info.mid]) == "Not authorized"
    ok = device.client.publish(T.status("c000"), b"online", qos=1)
    ok.wait_for_publish(5)
    assert device.acks[ok.mid] == 0
    device.close()


def test_devices_read_global_topics_and_aggregator_publishes_rounds(secure):
    agg, device = login(secure, "aggregator"), login(secure, "c001")
    for topic in (T.rounds, T.global_all, T.proxy_all, T.models_all):
        assert all(rc == 1 for rc in device.subscribe(topic)), topic
    published = {T.rounds: b'{"round": 1}', T.global_chunk(1, 0): b"global", T.proxy_manifest: b"proxy",
                 T.models_manifest: b"model"}
    for topic, payload in published.items():
        agg.publish(topic, payload)
    for topic, payload in published.items():
        assert device.wait_for(topic, payload), topic
    agg.close()
    device.close()


def test_device_cannot_read_other_devices_uploads(secure):
    spy, other, agg = login(secure, "c000"), login(secure, "c001"), login(secure, "aggregator")
    spy.subscribe("fedmekt/demo/clients/#")
    spy.subscribe(T.rounds)
    agg.subscribe(T.uploads_all)
    other.publish(T.upload_chunk("c001", 1, 0), b"private embedding")
    assert agg.wait_for(T.upload_chunk("c001", 1, 0), b"private embedding")  # the aggregator does get it
    agg.publish(T.rounds, b"sentinel")
    assert spy.wait_for(T.rounds, b"sentinel")
    assert T.upload_chunk("c001", 1, 0) not in {t for t, _ in spy.drain()}
    record("attack", "device reads another device's uploads")
    for p in (spy, other, agg):
        p.close()


def test_client_id_of_another_device_cannot_kick_it_off(secure):
    victim = login(secure, "c000")
    attacker = login(secure, "c001", client_id="c000")  # the broker replaces it with the username
    attacker.publish(T.status("c001"), b"online")
    assert not victim.disconnected.wait(1.0), "the victim was disconnected by a client-id takeover"
    record("attack", "client-id takeover")
    victim.close()
    attacker.close()


def test_provision_cli_revokes_a_device(secure):
    cmd = [str(FEDMEKT), "provision"] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli", "provision"]
    op = str(secure.folder)
    added = subprocess.run(cmd + ["add", op, "c099", "--federation", "demo"], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    for bad in (["add", op, "c/1", "--federation", "demo"], ["add", op, "c098"], ["remove", op, "nobody"],
                ["add", op, "aggregator", "--federation", "demo"], ["add", op, "c000", "--role", "monitor"],
                ["add", op, "c098", "--role", "admin"]):
        done = subprocess.run(cmd + bad, capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("fedmekt provision: error: "), done.stderr
    secure.broker.reload()  # mosquitto re-reads password file and ACL
    secure.passwords["c099"] = json.loads((secure.folder / "logins/c099/credentials.json").read_text())["password"]
    for _ in range(50):
        probe = connect(secure.port, "c099", secure.passwords["c099"], ca=secure.ca)
        if probe.connected.is_set():
            break
    assert probe.connected.is_set(), probe.connack
    probe.close()
    removed = subprocess.run(cmd + ["remove", op, "c099"], capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    secure.broker.reload()
    for _ in range(50):
        probe = connect(secure.port, "c099", secure.passwords["c099"], ca=secure.ca)
        if not probe.connected.is_set():
            break
        probe.close()
    assert not probe.connected.is_set()
    record("attack", "revoked device reconnects")


def test_fedmekt_mqtt_link_uses_tls_credentials_and_presence(secure):
    """The project's own MqttLink (what aggregator and clients use) works with the provisioned bundle."""
    from fedmekt.errors import UserError
    from fedmekt.transport.mqtt import LinkOptions, MqttLink, Presence

    monitor = login(secure, "monitor")
    monitor.subscribe(T.status_all)
    url = f"mqtts://localhost:{secure.port}"
    opts = LinkOptions(client_id="c002", username="c002", password=secure.passwords["c002"], ca_file=str(secure.ca))
    link = MqttLink(url, opts, Presence(T.status("c002"), b"online", b"offline")).connect(timeout=10)
    assert link.protocol == "5"
    assert monitor.wait_for(T.status("c002"), b"online")
    link.close()
    assert monitor.wait_for(T.status("c002"), b"offline")
    monitor.close()
    bad = LinkOptions(client_id="c002", username="c002", password="guess", ca_file=str(secure.ca))
    with pytest.raises(UserError, match="refused"):
        MqttLink(url, bad).connect(timeout=10)
    record("attack", "wrong password through fedmekt.transport.mqtt")


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=10).close()
        return True
    except ConnectionRefusedError:
        return False


@pytest.mark.parametrize("init_args, everywhere", [
    (["--host", "127.0.0.1", "--host", "localhost"], False),   # default: the first --host, an IP address
    (["--host", "localhost", "--bind", "127.0.0.1"], False),   # told
    (["--host", "localhost"], True),                          # a DNS name first: every interface
])
def test_provision_init_binds_the_listener_where_told(tmp_path, init_args, everywhere):
    """127.0.0.2 is loopback too: a listener on every interface answers there, one bound to 127.0.0.1 does not."""
    cmd = [str(FEDMEKT)] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    port = free_port()
    done = subprocess.run(cmd + ["provision", "init", str(tmp_path / "op"), "--port", str(port),
                                 "--control-port", str(free_port(avoid=port))] + init_args,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("every interface" in done.stdout) == everywhere, done.stdout
    broker = start_rendered_broker(tmp_path / "op" / "broker", port, tmp_path / "mosquitto")
    try:
        assert _accepts("127.0.0.1", port)
        assert _accepts("127.0.0.2", port) == everywhere
    finally:
        broker.stop()


def test_provision_init_refuses_a_bind_that_is_not_an_address(tmp_path):
    cmd = [str(FEDMEKT)] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    done = subprocess.run(cmd + ["provision", "init", str(tmp_path / "op"), "--host", "x", "--bind", "eth0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("fedmekt provision: error: invalid --bind 'eth0'"), \
        done.stderr
    assert not (tmp_path / "op").exists()
