"""Site brokers bridged to the lab broker (deploy/README.md, "Site brokers bridged to the lab").

The lab runs the shipped secured mosquitto; each site a mosquitto started from the bridge config
``fedmekt provision bridge`` writes (TLS to the lab, the site's own login, a persistent session). The
aggregator and a monitor recorder are on the lab, the gateways on their site brokers only.

A dropped bridge is modelled as a cut WAN line (tests/bridge_support.py, ``WanLink``): both brokers
and every connection to them stay up, only the bridge's TCP connection is closed and its reconnects
refused until the line is back. Killing the site broker instead would also drop the gateways and lose
the site's queue (a power cut at the site, not a WAN outage); restarting the lab broker would drop
every site and the aggregator at once.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge_support import BridgedFederation
from fault_ledger import record
from fedmekt.transport.broker import free_port, start_mosquitto
from fedmekt.errors import UserError
from fedmekt.transport.mqtt import BrokerAddress
from fedmekt.provisioning.acl import Login, render_acl
from fedmekt.provisioning.bridge import BRIDGE_CONF, LAB_CA, provision_bridge, render_bridge
from fedmekt.wire.signing import unwrap
from security_support import connect, provision, start_secure_broker

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[1]
FEDMEKT = Path(sys.executable).with_name("fedmekt")
CLIENTS = dict(clients=(1, 1, 2), per_round=4)  # c000 A only, c001 B only, c002 and c003 A+B
SITES = {"site-a": (0, 2), "site-b": (1, 3)}  # one single-modality and one A+B client each


def _conf_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_bridge_config_relays_exactly_what_the_lab_acl_gives_the_site(tmp_path):
    op = tmp_path / "op"
    provision.init(op, ("lab.example.org",), port=18883)
    folder = provision_bridge(op, "ward-3", "demo", ("c000", "c001"), site_dir=Path("/etc/mosquitto/fedmekt-bridge"))
    conf = (folder / BRIDGE_CONF).read_text()
    lines = _conf_lines(conf)
    assert lines[:2] == ["connection ward-3", "address lab.example.org:18883"]
    for setting in ("bridge_cafile /etc/mosquitto/fedmekt-bridge/lab-ca.crt", "bridge_insecure false",
                    "cleansession false", "remote_username ward-3", "notifications true",
                    "notification_topic fedmekt/demo/bridges/ward-3/state"):
        assert setting in lines, setting
    assert (folder / LAB_CA).read_bytes() == (op / "ca.crt").read_bytes()
    assert oct((folder / BRIDGE_CONF).stat().st_mode & 0o777) == "0o600"  # it holds the password
    password = json.loads((op / "logins" / "ward-3" / "credentials.json").read_text())["password"]
    assert f"remote_password {password}" in lines
    # every relayed pattern is one the ACL block of ward-3 grants, in the direction it grants it
    block = (op / "broker" / "acl").read_text().split("user ward-3\n")[1].split("\n\n")[0].splitlines()
    granted = {(kind, pattern) for _, kind, pattern in (rule.split(" ", 2) for rule in block)}
    need = {"in": {"read"}, "out": {"write"}, "both": {"read", "write"}}
    topics = [line.split() for line in lines if line.startswith("topic ")]
    for _, pattern, direction, qos in topics:
        assert qos == "1" and all((kind, pattern) in granted or ("readwrite", pattern) in granted
                                  for kind in need[direction]), (pattern, direction)
    relayed = {t[1] for t in topics}
    assert {"fedmekt/demo/clients/c000/upload/+/+", "fedmekt/demo/clients/c001/status", "fedmekt/demo/rounds",
            "fedmekt/demo/proxy/#", "fedmekt/demo/global/#"} <= relayed
    assert not any("c002" in p or "aggregator" in p or "/demo/" not in p for p in relayed)


def test_bridge_provisioning_refuses_what_could_not_work(tmp_path):
    op = tmp_path / "op"
    provision.init(op, ("lab.example.org", "10.0.0.5"), port=8883)
    provision_bridge(op, "ward-3", "demo", ("c000",))
    for kwargs, why in [(dict(lab_urls="mqtt://lab.example.org:1883"), "TLS only"),
                        (dict(lab_urls="mqtts://lab.other.org:8883"), "certificate is valid for"),
                        (dict(devices=("c000",)), "already behind site ward-3"),
                        (dict(devices=()), "relays the devices"),
                        (dict(devices=("aggregator",)), "protocol id"),
                        (dict(password="two words"), "spaces")]:
        args = dict(operator=op, site="ward-4", federation="demo", devices=("c009",)) | kwargs
        with pytest.raises(UserError, match=why):
            provision_bridge(**args)
    provision_bridge(op, "ward-4", "other", ("c000",), "mqtts://10.0.0.5:8883")  # another federation's c000
    provision.remove(op, "ward-3")
    assert not (op / "sites" / "ward-3").exists() and "user ward-3" not in (op / "broker" / "acl").read_text()


def test_bridge_cli_writes_the_site_folder_and_fails_in_one_line(tmp_path):
    op = tmp_path / "op"
    provision.init(op, ("lab.example.org",), port=8883)
    cmd = [str(FEDMEKT)] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    ok = subprocess.run(cmd + ["provision", "bridge", str(op), "ward-3", "--federation", "demo", "--device", "c000",
                               "--device", "c001"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert str(op / "sites" / "ward-3") in ok.stdout and (op / "sites" / "ward-3" / BRIDGE_CONF).is_file()
    bad = subprocess.run(cmd + ["provision", "bridge", str(op), "ward-4", "--federation", "demo", "--device", "c000",
                                "--lab-broker", "mqtts://elsewhere:8883"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not elsewhere" in bad.stderr, bad.stderr


def test_bridge_shipped_example_is_what_provisioning_renders():
    shipped = (REPO / "deploy" / "mosquitto" / BRIDGE_CONF).read_text()
    example = render_bridge(Login("ward-3", "bridge", ("demo",), ("c000", "c001")),
                            BrokerAddress.parse_list("mqtts://broker.example.org:8883"),
                            "RANDOM-PASSWORD-WRITTEN-BY-PROVISION", Path("/etc/mosquitto/fedmekt-bridge/lab-ca.crt"))
    assert shipped == example
    assert "user ward-3" in render_acl([Login("ward-3", "bridge", ("demo",), ("c000", "c001"))])


def test_bridge_lab_acl_confines_a_tampered_site(tmp_path):
    """A site whose bridge config was edited to relay more (another device's presence, every upload) gets
    nothing beyond its devices' topics: the lab's ACL for its login, not its own config, decides. Over TLS."""
    sb = start_secure_broker(tmp_path / "lab")  # devices c000, c001, c002 of demo
    site = None
    try:
        folder = provision_bridge(sb.folder, "site-a", "demo", ("c000", "c001"), f"mqtts://localhost:{sb.port}")
        sb.broker.reload()
        extra = "topic fedmekt/demo/clients/c002/status out 1\ntopic fedmekt/demo/clients/+/upload/# in 1\n"
        stay = "user root\n" if os.geteuid() == 0 else ""
        site = start_mosquitto(workdir=tmp_path / "site", extra_config=stay + (folder / BRIDGE_CONF).read_text() + extra)
        monitor = connect(sb.port, "monitor", sb.passwords["monitor"], ca=sb.ca, client_id="monitor")
        monitor.subscribe("fedmekt/#")
        assert monitor.wait_for("fedmekt/demo/bridges/site-a/state", b"1", 30), site.log[-2000:]
        local = connect(site.port, None, None, ca=None, client_id="c000")
        local.subscribe("fedmekt/#")
        other = connect(sb.port, "c002", sb.passwords["c002"], ca=sb.ca, client_id="c002")
        agg = connect(sb.port, "aggregator", sb.passwords["aggregator"], ca=sb.ca, client_id="aggregator")
        local.publish("fedmekt/demo/clients/c002/status", b"forged")  # relayed by the tampered line: denied
        local.publish("fedmekt/demo/clients/c000/status", b"online")  # its own device: relayed
        other.publish("fedmekt/demo/clients/c002/upload/0/0", b"secret")  # another site's upload
        agg.publish("fedmekt/demo/global/0/0", b"G")  # the sentinel: the lab relays it after the upload
        assert monitor.wait_for("fedmekt/demo/clients/c000/status", b"online")
        assert local.wait_for("fedmekt/demo/global/0/0", b"G")
        assert not monitor.wait_for("fedmekt/demo/clients/c002/status", b"forged", timeout=0.5)
        assert ("fedmekt/demo/clients/c002/upload/0/0", b"secret") not in local.drain()
        for probe in (monitor, local, other, agg):
            probe.close()
        record("attack", "tampered site bridge relays another device's topics")
    finally:
        if site is not None:
            site.stop()
        sb.broker.stop()


def test_bridge_from_a_secured_site_broker(tmp_path):
    """The site broker of the guide's first option: its own TLS listener and a login per gateway (a second
    `provision init` for the site) with the bridge drop-in beside it; the bridge relays both ways."""
    lab = start_secure_broker(tmp_path / "lab")
    site = None
    try:
        folder = provision_bridge(lab.folder, "site-a", "demo", ("c000",), f"mqtts://localhost:{lab.port}")
        lab.broker.reload()
        site_op, port = tmp_path / "site-operator", free_port()
        dep = provision.init(site_op, ("localhost",), port=port, control_port=free_port(avoid=port))
        bundle = provision.add(site_op, "c000", "device", ("demo",))
        password = json.loads((bundle / "credentials.json").read_text())["password"]
        stay = "user root\n" if os.geteuid() == 0 else ""
        site = start_mosquitto(port=port, listener=(dep.broker_dir / "fedmekt.conf").read_text(),
                               workdir=tmp_path / "site", extra_config=stay + (folder / BRIDGE_CONF).read_text())
        monitor = connect(lab.port, "monitor", lab.passwords["monitor"], ca=lab.ca, client_id="monitor")
        monitor.subscribe("fedmekt/#")
        assert monitor.wait_for("fedmekt/demo/bridges/site-a/state", b"1", 30), site.log[-2000:]
        agg = connect(lab.port, "aggregator", lab.passwords["aggregator"], ca=lab.ca, client_id="aggregator")
        agg.publish("fedmekt/demo/rounds", b"plan", retain=True)
        gateway = connect(port, "c000", password, ca=site_op / "ca.crt", client_id="c000")
        assert gateway.connected.is_set(), gateway.connack
        gateway.subscribe("fedmekt/demo/rounds")
        assert gateway.wait_for("fedmekt/demo/rounds", b"plan")
        gateway.publish("fedmekt/demo/clients/c000/status", b"online", retain=True)
        assert monitor.wait_for("fedmekt/demo/clients/c000/status", b"online")
        for probe in (monitor, agg, gateway):
            probe.close()
    finally:
        if site is not None:
            site.stop()
        lab.broker.stop()


def _rows(fed: BridgedFederation) -> list[dict]:
    return [json.loads(line) for line in (fed.out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _uploaders(fed: BridgedFederation, since: float = 0.0) -> set[str]:
    """Clients whose uploads reached the lab broker (after ``since``)."""
    return {t.split("/")[3] for at, t, _ in fed.recorder.snapshot() if "/upload/" in t and at > since}


def _retained(port: int, topic: str, timeout: float = 10.0) -> bool:
    """Whether the (plain loopback) broker on ``port`` holds, or comes to hold within ``timeout``, a retained
    message on ``topic``: a fresh subscription each try (a live copy to an old subscriber is not flagged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = connect(port, None, None, ca=None, client_id="retained-probe")
        try:
            probe.subscribe(topic)
            if probe.messages.get(timeout=1.0).retain:
                return True
        except queue.Empty:
            pass
        finally:
            probe.close()
    return False


@pytest.mark.slow
def test_bridge_federation_on_two_site_brokers_completes(tmp_path):
    """Site B's gateways start only after the aggregator has published its manifest and proxy set: their site
    broker already holds the retained copies its bridge relayed from the lab, and serves them."""
    fed = BridgedFederation(tmp_path, SITES, rounds=2, round_timeout=30.0, **CLIENTS)
    late = fed.sites["site-b"]
    try:
        for cid in fed.sites["site-a"].devices:
            fed.start_client(cid)
        fed.start_aggregator()
        manifest = f"fedmekt/{fed.federation}/proxy/manifest"
        fed.wait_until(lambda: any(t == manifest for _, t, _ in fed.recorder.snapshot()), 120, "the proxy manifest")
        assert _retained(late.broker.port, manifest), late.broker.log[-2000:]
        for cid in late.devices:
            fed.start_client(cid)
        fed.run_to_end(timeout=240)
        rows = _rows(fed)
        assert [r["round"] for r in rows] == [0, 1]
        assert all(r["absorbed"] == r["selected"] == len(fed.client_ids) for r in rows), rows
        assert _uploaders(fed) == set(fed.client_ids)  # every gateway's uploads crossed its site's bridge
        assert all(r["rejected"] == 0 for r in rows), rows  # nothing relayed was refused (sender, nonce, shape)
    finally:
        fed.close()


def _announced_after(fed: BridgedFederation, since: float) -> set[int]:
    rounds = set()
    for at, topic, payload in fed.recorder.snapshot():
        if at > since and topic == f"fedmekt/{fed.federation}/rounds" and payload:
            plan = json.loads(unwrap(payload)).get("plan")
            rounds |= {plan["round"]} if plan else set()
    return rounds


@pytest.mark.slow
def test_bridge_dropped_and_restored_mid_run(tmp_path):
    """Site A's WAN line is cut as round 1 starts and restored once that round has closed without it:
    every round closes, and site A's gateways upload again in a round announced after the restore
    (the lab queued its messages for the bridge's persistent session meanwhile). A gateway is selectable only with
    fresh proof of life, which site A's can send only once the line is back: with ``--min-clients 4`` a round
    waits (up to ``--wait-timeout``) for them rather than racing the bridge's reconnect."""
    fed = BridgedFederation(tmp_path, SITES, rounds=5, round_timeout=8.0, **CLIENTS)
    site = fed.sites["site-a"]
    try:
        fed.start_all("--min-clients", "4", "--wait-timeout", "20")
        fed.wait_announced(1, timeout=240)
        site.link.cut()
        fed.wait_bridge("site-a", b"0", 30)  # the lab published the bridge's Will
        fed.wait_round_done(1, timeout=60)  # at its deadline, without site A
        restored_at = time.time()
        site.link.restore()
        fed.wait_bridge("site-a", b"1", 60)  # the bridge's next attempt (restart_timeout) gets through
        fed.run_to_end(timeout=300)
        rows = _rows(fed)
        assert [r["round"] for r in rows] == list(range(fed.rounds))  # every round closed, none lost or repeated
        assert rows[1]["absorbed"] < rows[1]["selected"], rows[1]  # site A could not take part in round 1
        later = _announced_after(fed, restored_at)
        back = {cid for at, t, _ in fed.recorder.snapshot() if "/upload/" in t and int(t.split("/")[5]) in later
                for cid in [t.split("/")[3]]}
        assert back >= set(site.devices), (sorted(later), sorted(back))
        assert fed.bridge_states("site-a")[-3:] == [b"1", b"0", b"1"]
        for cid in site.devices:  # the WAN outage never touched the gateways' own connections
            assert "disconnected from broker" not in fed.log(cid), fed.log(cid)[-2000:]
        record("fault", "site bridge's WAN link cut for a round and restored", lost=fed.rounds - len(rows))
    finally:
        fed.close()
