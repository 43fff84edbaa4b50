"""Helpers for the security / fault tests: the shipped secured broker and small paho probes.

The broker is started with the mosquitto drop-in rendered by the provisioning tool
(``fedmekt.provisioning``, ``fedmekt provision``), so the tests exercise exactly what an
operator installs.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from fedmekt.transport.broker import MosquittoProcess, free_port, start_mosquitto
from fedmekt.provisioning import registry as provision

DEVICES = ("c000", "c001", "c002")


@dataclass
class SecureBroker:
    """A running mosquitto with the shipped TLS + password + ACL configuration."""

    broker: MosquittoProcess
    folder: Path  # the operator's folder (CA key, credentials); the broker's files are in broker_dir
    passwords: dict[str, str]

    @property
    def broker_dir(self) -> Path:
        return self.folder / "broker"

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"


def start_secure_broker(tmp: Path, users: tuple[str, ...] = DEVICES, federation: str = "demo",
                        bind: str = "127.0.0.1") -> SecureBroker:
    """Provision CA, server cert for 127.0.0.1/localhost, aggregator, monitor and devices of
    ``federation``; start mosquitto with its devices' listener on ``bind``."""
    folder = tmp / "fedmekt-operator"
    port = free_port()
    dep = provision.init(folder, ("localhost", "127.0.0.1"), port=port, bind=bind,
                         control_port=free_port(avoid=port))
    passwords = {"janitor": json.loads((folder / "logins" / "janitor" / "credentials.json").read_text())["password"]}
    for name, role in [("aggregator", "aggregator"), ("monitor", "monitor")] + [(u, "device") for u in users]:
        bundle = provision.add(folder, name, role, (federation,) if role != "monitor" else ())
        passwords[name] = json.loads((bundle / "credentials.json").read_text())["password"]
    return SecureBroker(start_rendered_broker(dep.broker_dir, port, tmp / "mosquitto"), folder, passwords)


def start_rendered_broker(broker_dir: Path, port: int, workdir: Path) -> MosquittoProcess:
    """mosquitto with the ``fedmekt.conf`` that ``provision init`` rendered into ``broker_dir``."""
    conf = (broker_dir / "fedmekt.conf").read_text()
    # Run as root (CI), mosquitto would drop to the `mosquitto` user, which cannot enter
    # pytest's 0700 temporary folders; in production the files live in /etc/mosquitto/fedmekt.
    stay = "user root\n" if os.geteuid() == 0 else ""
    return start_mosquitto(port=port, listener=conf, workdir=workdir, extra_config=stay)


@dataclass
class Probe:
    """A paho 2.x client (VERSION2 callbacks) that records what happens to it."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    connack: object = None
    messages: "queue.Queue[mqtt.MQTTMessage]" = field(default_factory=queue.Queue)
    seen: list[tuple[str, bytes]] = field(default_factory=list)
    acks: dict[int, object] = field(default_factory=dict)

    def wait_for(self, topic: str, payload: bytes | None = None, timeout: float = 5.0) -> bool:
        """Block until ``topic`` (with ``payload`` if given) has been received."""
        deadline = time.monotonic() + timeout
        while True:
            if any(t == topic and (payload is None or p == payload) for t, p in self.seen):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                return False
            self.seen.append((msg.topic, bytes(msg.payload)))

    def drain(self) -> list[tuple[str, bytes]]:
        while True:
            try:
                msg = self.messages.get_nowait()
            except queue.Empty:
                return self.seen
            self.seen.append((msg.topic, bytes(msg.payload)))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)

    def subscribe(self, topic: str, qos: int = 1) -> object:
        """Subscribe and wait for the SUBACK; returns its reason codes."""
        done = threading.Event()
        result: list = []

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            result.extend(reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=qos)
        assert done.wait(5), f"no SUBACK for {topic} (connection: {self.connack})"
        return result

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(port: int, username: str | None, password: str | None, *, ca: Path | None,
            client_id: str = "", protocol=mqtt.MQTTv311, timeout: float = 5.0) -> Probe:
    """Connect and wait for CONNACK or disconnection; ``ca=None`` means plain TCP (no TLS)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         reconnect_on_failure=False)
    probe = Probe(client)
    if username is not None:
        client.username_pw_set(username, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(client, userdata, flags, reason_code, properties):
        probe.connack = reason_code
        if reason_code == 0:
            probe.connected.set()
        else:
            probe.disconnected.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        probe.disconnected.set()

    def on_message(client, userdata, msg):
        probe.messages.put(msg)

    def on_publish(client, userdata, mid, reason_code, properties):
        probe.acks[mid] = reason_code

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_message, client.on_publish = on_message, on_publish
    try:
        client.connect("127.0.0.1" if ca is None else "localhost", port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:  # refused during the TLS handshake
        probe.connack = exc
        probe.disconnected.set()
        return probe
    client.loop_start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (probe.connected.is_set() or probe.disconnected.is_set()):
        time.sleep(0.02)
    return probe
