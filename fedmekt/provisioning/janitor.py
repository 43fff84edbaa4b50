"""Clear what a revoked login left on the broker: its retained messages.

A device login may publish retained messages on its own protocol topics (mosquitto's ACL cannot tell retained
from live publishes, and its retain flag cannot be refused per topic), up to 260 KiB each on any number of
``upload/<round>/<chunk>`` topics. Revoking the login does not remove them: mosquitto 2.0.11 keeps serving them
to every new subscriber (``check_retain_source`` did not stop it; tests/test_security_retained_park.py). An
empty retained message deletes a topic's retained copy, so the operator's ``janitor`` login (read and write on
every federation's ``clients/#``, credentials only in the operator folder, beside the CA key) subscribes to the
revoked login's topics, collects the retained copies the broker sends, and publishes an empty retained message
on each. The broker may drop part of a large set on the way (its per-client queue limits), so this repeats until
one pass finds none.
"""

from __future__ import annotations

import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho

from fedmekt.errors import UserError
from fedmekt.wire.topics import ROOT

JANITOR = "janitor"  # the login name (and MQTT client id) of the operator's janitor
# The sentinel's federation level: not a valid federation name (registry.NAME_RE), so no federation's
# subscriber ever sees it, and it matches the janitor's ACL (fedmekt/+/clients/#) and its own filter.
SENTINEL_FEDERATION = "_janitor"
MAX_PASSES = 20
QUIET_S = 2.0  # nothing came for this long and no sentinel yet: the broker dropped it with the overflow, send another


@dataclass
class _Pass:
    """What one subscription brought: retained topics, and whether the sentinel (published after the
    subscription was acknowledged, so queued behind every retained copy) came back."""

    sentinel: str  # the prefix of this pass's sentinel topics
    retained: set[str] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    last: float = field(default_factory=time.monotonic)  # when the last message came


@dataclass
class _Janitor:
    client: paho.Client
    name: str
    timeout: float
    acked: threading.Event = field(default_factory=threading.Event)
    granted: list = field(default_factory=list)
    current: _Pass | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # the network thread adds while a pass ends

    def on_message(self, client, userdata, msg) -> None:
        with self.lock:
            now = self.current
            if now is None:
                return
            now.last = time.monotonic()
            if msg.topic.startswith(now.sentinel):
                now.done.set()
            elif msg.retain and msg.payload:
                now.retained.add(msg.topic)

    def on_ack(self, client, userdata, mid, reason_codes, properties) -> None:
        self.granted[:] = list(reason_codes)
        self.acked.set()

    def _request(self, call, what: str) -> None:
        self.acked.clear()
        call()
        if not self.acked.wait(self.timeout):
            raise UserError(f"the broker did not acknowledge the janitor's {what} within {self.timeout:.0f} s")

    def sweep(self) -> tuple[int, bool]:
        """One pass: subscribe, collect, clear. Returns the retained messages it cleared and whether the pass saw
        them all (the sentinel came back; if not, the broker dropped part of the set: look again)."""
        topic_filter = f"{ROOT}/+/clients/{self.name}/#"
        now = self.current = _Pass(f"{ROOT}/{SENTINEL_FEDERATION}/clients/{self.name}/sentinel/{secrets.token_hex(8)}")
        self._request(lambda: self.client.subscribe(topic_filter, qos=1), f"subscription to {topic_filter}")
        if any(rc.is_failure for rc in self.granted):
            raise UserError(f"the broker refused the janitor's subscription to {topic_filter} ({self.granted[0]}): "
                            f"reload mosquitto after `fedmekt provision remove`, which adds the janitor login")
        self.client.publish(now.sentinel, b"", qos=1).wait_for_publish(self.timeout)
        deadline, resent = time.monotonic() + self.timeout, 0
        while not now.done.wait(0.2) and time.monotonic() < deadline:
            if time.monotonic() - now.last > QUIET_S:  # the broker's queue for us overflowed and took the sentinel
                resent += 1
                now.last = time.monotonic()
                self.client.publish(f"{now.sentinel}/{resent}", b"", qos=1).wait_for_publish(self.timeout)
        self._request(lambda: self.client.unsubscribe(topic_filter), f"unsubscription from {topic_filter}")
        with self.lock:  # late copies after this are left to the next pass
            self.current = None
            found = sorted(now.retained)
        complete = now.done.is_set() and not (resent and found)  # a dropped sentinel: drops, look again
        for topic in found:
            info = self.client.publish(topic, b"", qos=1, retain=True)  # an empty retained message deletes it
            info.wait_for_publish(self.timeout)
            if not info.is_published():
                raise UserError(f"the broker did not acknowledge clearing {topic} within {self.timeout:.0f} s")
        return len(found), complete


def clear_retained(host: str, port: int, password: str, ca_file: str, name: str, timeout: float = 30.0) -> int:
    """Delete every retained message on ``fedmekt/<any federation>/clients/<name>/…``; returns how many."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=JANITOR, protocol=paho.MQTTv311,
                         clean_session=True, reconnect_on_failure=False)  # no session left behind on the broker
    client.username_pw_set(JANITOR, password)
    client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    janitor = _Janitor(client, name, timeout)
    connack: list = []
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        connack.append(reason_code)
        connected.set()

    client.on_connect, client.on_message = on_connect, janitor.on_message
    client.on_subscribe = client.on_unsubscribe = janitor.on_ack
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot reach the broker at {host}:{port} as the janitor: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout) or connack[0].is_failure:
            why = connack[0] if connack else f"no CONNACK within {timeout:.0f} s"
            raise UserError(f"the broker at {host}:{port} refused the janitor login ({why}): reload mosquitto after "
                            f"`fedmekt provision remove`, which adds that login")
        cleared, deadline = 0, time.monotonic() + timeout * MAX_PASSES
        for _ in range(MAX_PASSES):
            found, complete = janitor.sweep()
            cleared += found
            if complete and not found:
                return cleared
            if time.monotonic() > deadline:
                break
        raise UserError(f"retained messages of {name} still came after {MAX_PASSES} passes; run it again")
    finally:
        client.disconnect()
        client.loop_stop()
