"""Logins and broker limits through the shipped TLS + password + ACL mosquitto.

* takeover: the broker forces client id = username, so a second session of one login
  replaces the first. Tools get their own logins (separate monitor logins coexist), the
  monitor publishes nothing, the aggregator cannot publish as a client, devices are
  confined to their federation, and a taken-over aggregator ends with a clear error
  instead of fighting the other session for the rest of the run.
* broker_limits / retained_flood: the protocol's largest message passes, anything larger is
  refused, and a device cannot park retained messages on topics outside the protocol.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from export.push import CHUNK_BYTES
from fault_ledger import record
from fedmekt.errors import UserError
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.provisioning.registry import render_conf
from fedmekt.wire.codec import DEFAULT_CHUNK_SIZE
from fedmekt.wire.manifest import MAX_CONTROL
from fedmekt.wire.topics import Topics
from security_support import SecureBroker, connect, provision, start_secure_broker
from wait_support import wait_for

pytestmark = pytest.mark.broker
T = Topics("demo")
FEDMEKT = Path(sys.executable).with_name("fedmekt")


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> SecureBroker:
    sb = start_secure_broker(tmp_path_factory.mktemp("logins"))
    bundle = provision.add(sb.folder, "dashboard", "monitor")  # a second read-only tool with its own login
    sb.passwords["dashboard"] = json.loads((bundle / "credentials.json").read_text())["password"]
    sb.broker.reload()  # mosquitto re-reads the password file and the ACL

    def accepted() -> bool:
        probe = connect(sb.port, "dashboard", sb.passwords["dashboard"], ca=sb.ca, client_id="dashboard")
        probe.close()
        return probe.connected.is_set()

    wait_for(accepted, 30, "mosquitto to accept the new login after SIGHUP", every=0.1)
    yield sb
    sb.broker.stop()


def login(sb: SecureBroker, user: str, **kw):
    kw.setdefault("client_id", user)
    probe = connect(sb.port, user, sb.passwords[user], ca=sb.ca, **kw)
    assert probe.connected.is_set(), f"{user} could not connect: {probe.connack}"
    return probe


def link_options(sb: SecureBroker, user: str, **kw) -> LinkOptions:
    return LinkOptions(client_id=user, username=user, password=sb.passwords[user], ca_file=str(sb.ca),
                       reconnect_min=1, reconnect_max=2, **kw)


def _acks(sb: SecureBroker, user: str, topics: list[str], retain: bool = False) -> dict[str, str]:
    """MQTT 5 PUBACK reason of each publish by ``user``: "Not authorized" when the ACL denies it
    (allowed ones get "Success" or "No matching subscribers")."""
    probe = login(sb, user, protocol=mqtt.MQTTv5)
    out = {}
    for topic in topics:
        info = probe.client.publish(topic, b"forged", qos=1, retain=retain)
        info.wait_for_publish(5)
        out[topic] = str(probe.acks[info.mid])
    probe.close()
    return out


# -- takeover ----------------------------------------------------------------------------------
def test_takeover_second_aggregator_session_ends_the_first_with_a_clear_error(secure):
    url = f"mqtts://localhost:{secure.port}"
    first = MqttLink(url, link_options(secure, "aggregator", session_topic=T.aggregator_session)).connect(10)
    second = MqttLink(url, link_options(secure, "aggregator", session_topic=T.aggregator_session)).connect(10)
    # mosquitto 2.0 sends no DISCONNECT 142: the first learns of the takeover from the second's token at its
    # reconnect (one cycle, ~2 s); on a loaded machine the token can miss that reconnect, and each further kick
    # cycle of TLS reconnects with 1-2 s backoff adds to the wait
    deadline = time.monotonic() + 30
    with pytest.raises(UserError, match="took over this session"):
        while time.monotonic() < deadline:
            first.get(timeout=0.2)
        pytest.fail("the first link raised no takeover error within 30 s of the second's connect")
    with pytest.raises(UserError, match="own login"):
        first.publish(T.rounds, b"late")
    assert second.wait_connected(15)  # kicked by the first's reconnects, back after its backoff
    wait_for(lambda: not first.connected, 5, "the first link down for good after its takeover error")
    # a PUBACK on the second's session now: the kick of the first's last reconnect is behind it, and the first,
    # which disconnected on purpose (no reconnect loop), cannot kick it again
    second.publish_all([(T.metrics, b"")], timeout=30)
    assert second.connected and second.connects <= 2
    assert second.get(timeout=0.1) is None  # and the second keeps working
    first.close()
    second.close()
    record("attack", "second session with the aggregator login", tried=1, handled=1)


def _kick_until(sb: SecureBroker, link: MqttLink, kicks: int, timeout: float) -> int:
    """Connect a token-less session on ``link``'s login each time the link is back (a foreign tool that knows the
    password), ``kicks`` times at most; the link's own UserError, if any, propagates."""
    done, deadline = 0, time.monotonic() + timeout
    while done < kicks and time.monotonic() < deadline:
        if link.connected:
            login(sb, link.options.username).close()
            done += 1
        link.get(timeout=0.3)
    return done


def test_takeover_by_a_tokenless_session_flood_ends_the_aggregator_link(secure):
    """A session that publishes no token kicks us at each of its connects (mosquitto 2.0 sends no MQTT 5 reason
    142). The aggregator's link counts the lost connections (kick_limit) and ends with the takeover error instead of
    fighting for the session; a gateway's link (no limit) rides out the same kicks like a flaky network."""
    url = f"mqtts://localhost:{secure.port}"
    agg = MqttLink(url, link_options(secure, "aggregator", session_topic=T.aggregator_session, kick_limit=3)).connect(10)
    with pytest.raises(UserError, match="took over this session"):
        _kick_until(secure, agg, kicks=10, timeout=40)
    agg.close()
    device = MqttLink(url, link_options(secure, "c001", session_topic=T.session("c001"))).connect(10)
    assert _kick_until(secure, device, kicks=3, timeout=40) == 3
    assert device.wait_connected(10)
    device.close()
    record("attack", "token-less session flood on the aggregator login", tried=1, handled=1)


@pytest.mark.slow
def test_takeover_of_a_running_aggregator_process_is_a_clear_error(secure, tmp_path):
    config = tmp_path / "federation.toml"
    config.write_text('federation = "takeover"\ndataset = "demo"\nclients = [1, 1, 1]\nper_round = 3\nrounds = 2\n'
                      'proxy_windows = 8\nseed = 0\ndevice = "cpu"\n')
    # a federation of its own (no token retained yet), with its own aggregator login: one federation per login
    bundle = provision.add(secure.folder, "agg-takeover", "aggregator", ("takeover",))
    secure.passwords["agg-takeover"] = json.loads((bundle / "credentials.json").read_text())["password"]
    secure.broker.reload()
    deadline = time.monotonic() + 30
    while not (probe := connect(secure.port, "agg-takeover", secure.passwords["agg-takeover"], ca=secure.ca,
                                client_id="agg-takeover")).connected.is_set():
        assert time.monotonic() < deadline, f"the new login was never accepted: {probe.connack}"
    probe.close()
    creds = bundle / "credentials.json"
    cmd = [str(FEDMEKT)] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    proc = subprocess.Popen(cmd + ["aggregator", "--broker", f"mqtts://localhost:{secure.port}", "--credentials",
                                   str(creds), "--config", str(config), "--out", str(tmp_path / "agg"),
                                   "--wait-clients", "3", "--wait-timeout", "120", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        watch = login(secure, "monitor")
        topics = Topics("takeover")
        session = topics.aggregator_session
        watch.subscribe(topics.liveness)
        # its first liveness challenge follows its connect and manifest: by then its link has seen its own session
        # token come back, so the intruder is the newer session (an intruder racing that token would be the older)
        assert watch.wait_for(topics.liveness, timeout=90), "the aggregator never published its liveness challenge"
        intruder = MqttLink(f"mqtts://localhost:{secure.port}",
                            link_options(secure, "agg-takeover", session_topic=session)).connect(10)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail("awaited the running aggregator's takeover error for 60 s after the second session connected; "
                        f"its log:\n{err[-4000:]}")
        assert proc.returncode == 2, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("fedmekt aggregator: error: ") and "took over this session" in last, err
        assert intruder.wait_connected(5) and intruder.connects <= 2
        intruder.close()
        watch.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    record("attack", "second aggregator while one runs", tried=1, handled=1)


def test_takeover_second_device_session_ends_the_first(secure):
    url, session = f"mqtts://localhost:{secure.port}", T.session("c001")
    first = MqttLink(url, link_options(secure, "c001", session_topic=session)).connect(10)
    second = MqttLink(url, link_options(secure, "c001", session_topic=session)).connect(10)
    deadline = time.monotonic() + 10
    with pytest.raises(UserError, match="took over this session"):
        while time.monotonic() < deadline:
            first.get(timeout=0.2)
    assert second.wait_connected(5)
    first.close()
    second.close()
    record("attack", "second session with a device login", tried=1, handled=1)


def test_takeover_monitor_logins_of_separate_tools_coexist(secure):
    monitor, dashboard = login(secure, "monitor"), login(secure, "dashboard")
    for p in (monitor, dashboard):
        p.subscribe(T.status_all)
    device = login(secure, "c000")
    device.publish(T.status("c000"), b"online")
    assert monitor.wait_for(T.status("c000"), b"online") and dashboard.wait_for(T.status("c000"), b"online")
    assert not monitor.disconnected.is_set() and not dashboard.disconnected.is_set()
    for p in (monitor, dashboard, device):
        p.close()


def test_takeover_monitor_publishes_nothing(secure):
    forged = [T.status("c000"), T.upload_chunk("c000", 1, 0), T.inference("c000"), T.rounds, T.metrics,
              T.global_chunk(1, 0), T.proxy_manifest, T.models_manifest, T.aggregator_session, "fedmekt/demo/x"]
    acks = _acks(secure, "monitor", forged)
    assert set(acks.values()) == {"Not authorized"}, acks
    record("attack", "monitor login publishes", tried=len(forged), handled=len(forged))


def test_takeover_aggregator_cannot_publish_as_a_client(secure):
    forged = [T.status("c000"), T.upload_chunk("c000", 1, 0), T.inference("c000")]
    acks = _acks(secure, "aggregator", forged + [T.rounds])
    assert {acks[t] for t in forged} == {"Not authorized"} and acks[T.rounds] != "Not authorized", acks
    record("attack", "aggregator login publishes as a client", tried=len(forged), handled=len(forged))


def test_takeover_device_rights_end_at_its_federation_and_the_protocol_topics(secure):
    other = Topics("other")
    outside = [other.status("c000"), other.upload_chunk("c000", 1, 0), other.inference("c000"),
               f"{T.prefix}/clients/c000/upload/1", f"{T.prefix}/clients/c000/upload/1/0/x",
               f"{T.prefix}/clients/c000/anything"]
    acks = _acks(secure, "c000", outside + [T.status("c000"), T.upload_chunk("c000", 1, 0)])
    assert {acks[t] for t in outside} == {"Not authorized"}, acks
    assert "Not authorized" not in (acks[T.status("c000")], acks[T.upload_chunk("c000", 1, 0)]), acks
    # and it reads nothing of the other federation
    agg, spy = login(secure, "aggregator"), login(secure, "c000")
    spy.subscribe("fedmekt/+/rounds")
    agg.publish(other.rounds, b"other federation")
    agg.publish(T.rounds, b"sentinel")
    assert spy.wait_for(T.rounds, b"sentinel")
    assert other.rounds not in {t for t, _ in spy.drain()}
    for p in (agg, spy):
        p.close()
    record("attack", "device publishes outside its federation / the protocol topics", tried=len(outside),
           handled=len(outside))


# -- broker limits -----------------------------------------------------------------------------
def _conf_value(conf: str, key: str) -> int:
    match = re.search(rf"^{key} (\d+)$", conf, re.M)
    assert match, f"{key} missing from the shipped config"
    return int(match.group(1))


def test_broker_limits_fit_the_protocol_and_nothing_much_larger(secure):
    conf = render_conf(secure.broker_dir, secure.port)
    size, packet = _conf_value(conf, "message_size_limit"), _conf_value(conf, "max_packet_size")
    largest = max(DEFAULT_CHUNK_SIZE, CHUNK_BYTES, MAX_CONTROL)
    assert largest <= size < packet < 1024 * 1024 // 2
    for key in ("max_connections", "max_queued_messages", "max_queued_bytes", "max_inflight_messages"):
        assert _conf_value(conf, key) > 0
    watch = login(secure, "aggregator")
    watch.subscribe(T.uploads_all)
    device = login(secure, "c001", protocol=mqtt.MQTTv5)
    full = bytes(largest)
    info = device.client.publish(T.upload_chunk("c001", 1, 0), full, qos=1)
    info.wait_for_publish(5)
    assert str(device.acks[info.mid]) == "Success"
    assert watch.wait_for(T.upload_chunk("c001", 1, 0), full)  # the protocol's largest message passes
    device.client.publish(T.upload_chunk("c001", 1, 1), bytes(size + 1), qos=1)
    assert device.disconnected.wait(5), "an oversize message was accepted"
    watch.publish(T.rounds, b"sentinel")
    assert T.upload_chunk("c001", 1, 1) not in {t for t, _ in watch.drain()}
    for p in (watch, device):
        p.close()
    record("attack", "message beyond the protocol's chunk size", tried=1, handled=1)


def test_retained_flood_device_cannot_park_big_or_stray_retained_messages(secure):
    mine = f"{T.prefix}/clients/c002"
    device = login(secure, "c002")
    for i in range(3):
        device.client.publish(f"{mine}/upload/{i}/0", bytes(1024 * 1024), qos=1, retain=True)
    assert device.disconnected.wait(5), "a 1 MiB retained message was accepted"
    device.close()
    device = login(secure, "c002")
    stray = [f"{mine}/upload/1/0/x", f"{mine}/upload/x", f"{mine}/upload/1/0/a/b/c", f"{mine}/status/x",
             f"{mine}/junk"]
    for topic in stray:
        device.publish(topic, b"parked" * 1000, retain=True)
    device.publish(T.status("c002"), b"online", retain=True)  # allowed: the sentinel
    device.close()
    fresh = login(secure, "monitor")
    fresh.subscribe(f"{mine}/#")
    fresh.subscribe(T.status("c002"))  # its retained copy comes after every one of the first filter's
    wait_for(lambda: [t for t, _ in fresh.drain()].count(T.status("c002")) >= 2, 10,
             "the retained messages of both subscriptions")
    retained = {t for t, _ in fresh.drain()}
    assert retained == {T.status("c002")}, retained
    fresh.close()
    record("attack", "retained flood on sub-topics of a device's upload topic", tried=3 + len(stray),
           handled=3 + len(stray))


def test_takeover_token_from_a_stolen_device_login_does_not_stop_the_gateway(secure, tmp_path, tmp_path_factory):
    """The real gateway process (receive-only install, waiting for a model) survives a stolen login: the
    attacker connects with the device's password (kicking it) and publishes a session token; the gateway
    reconnects, logs an alert, reclaims its session with a fresh token and keeps running."""
    from export_support import signing_keys

    _, public = signing_keys(tmp_path_factory)
    session, status = T.session("c002"), T.status("c002")
    watch = login(secure, "monitor")
    watch.subscribe(session)
    watch.subscribe(status)
    cmd = [str(FEDMEKT)] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    gateway = subprocess.Popen(cmd + [
        "client", "--infer-only", "--broker", f"mqtts://localhost:{secure.port}", "--client-id", "c002",
        "--credentials", str(secure.folder / "logins/c002/credentials.json"), "--federation", "demo",
        "--public-key", str(public), "--source", "stdin", "--modalities", "acce:3",
        "--store", str(tmp_path / "gw" / "store.sqlite")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        def tokens(timeout: float, what: str, ok) -> list[bytes]:
            """The session tokens seen so far, once ``ok`` of them (woken by each message; bounded)."""
            deadline = time.monotonic() + timeout
            while True:
                got = [p for t, p in watch.drain() if t == session and p]
                if ok(got):
                    return got
                assert time.monotonic() < deadline and gateway.poll() is None, \
                    f"{what} within {timeout:.0f} s; tokens {got}; gateway exit {gateway.poll()}"
                watch.wait_for(session + "/never", timeout=0.5)   # blocks on the next message, keeps it in seen

        tokens(90, "the gateway's own session token", lambda got: len(got) >= 1)
        stolen = b"f" * 32
        attacker = login(secure, "c002")              # the same login: the broker kicks the gateway
        attacker.publish(session, stolen, retain=True)
        attacker.close()
        got = tokens(60, "a fresh gateway token after the stolen one",
                     lambda got: stolen in got and got[-1] != stolen and len(set(got)) >= 3)
        assert gateway.poll() is None, "the gateway obeyed the stolen token and stopped"
        gateway.send_signal(signal.SIGTERM)            # still serving: stop it as systemd would
        _, err = gateway.communicate(timeout=60)
        assert "error" not in err.strip().splitlines()[-1], err[-3000:]
        assert "ALERT: another connection logged in as 'c002' took over this session" in err, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert got.index(stolen) < len(got) - 1
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.communicate()
        watch.close()
    record("attack", "session token with a stolen device login", tried=1, handled=1)


IDLE_SOCKETS = """
import resource, selectors, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 4096, hard))
idle = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) for _ in range(int(sys.argv[2]))]
closed, deadline = 0, time.monotonic() + 60     # the broker closes those beyond its slots: count them (bounded)
with selectors.DefaultSelector() as sel:
    for s in idle:
        sel.register(s, selectors.EVENT_READ)
    while closed < int(sys.argv[3]) and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            if key.fileobj.recv(1) == b"":
                closed += 1
                sel.unregister(key.fileobj)
print(closed, flush=True)
sys.stdin.read()                                  # hold the rest until told
"""


def test_idle_unauthenticated_sockets_cannot_lock_the_aggregator_out(tmp_path):
    """1,200 idle TCP sockets (no TLS, no login; held by another process) against the shipped config, with
    mosquitto under systemd's default 1024 file descriptors: they fill the devices' listener, the aggregator and
    a monitor still log in on the control listener, and devices log in again once the sockets go."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the test needs 1,200 sockets in one process and the hard file limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))   # what systemd gives mosquitto
    try:
        sb = start_secure_broker(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    dep = provision.Deployment.open(sb.folder)
    attacker = subprocess.Popen([sys.executable, "-c", IDLE_SOCKETS, str(sb.port), "1200", "200"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        refused = int(attacker.stdout.readline() or 0)   # proof the listener is full: sockets beyond it closed
        assert refused >= 200, f"only {refused} of 1,200 idle sockets refused: is max_connections set?"
        device = connect(sb.port, "c000", sb.passwords["c000"], ca=sb.ca, client_id="c000")
        device.close()
        assert not device.connected.is_set(), "the devices' listener should be full"   # what 2.0.11 allows
        assert dep.control_url == f"mqtts://localhost:{dep.control_port}"
        for user in ("aggregator", "monitor"):
            link = MqttLink(dep.control_url, LinkOptions(client_id=user, username=user, password=sb.passwords[user],
                                                         ca_file=str(sb.ca))).connect(20)
            assert link.connected, f"{user} locked out"
            link.close()
        attacker.communicate(timeout=30)               # the attacker lets go: its sockets close
        deadline = time.monotonic() + 30
        while True:                                    # the device gets its slot back
            device = connect(sb.port, "c000", sb.passwords["c000"], ca=sb.ca, client_id="c000")
            device.close()
            if device.connected.is_set():
                break
            assert time.monotonic() < deadline, f"device still refused after the sockets closed: {device.connack}"
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.communicate()
        sb.broker.stop()
    record("attack", "idle unauthenticated sockets", tried=1, handled=1)
