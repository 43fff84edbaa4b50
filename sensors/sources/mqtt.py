"""Samples published on an MQTT sensor topic (one or more CSV/JSON lines per message).

With a wildcard topic (``sensors/+/raw``) every concrete topic is its own stream and unit,
with its own timestamp order. paho reconnects by itself; each lost connection is counted as
``disconnected``. The broker's ACLs decide who may publish there.

paho's network thread only queues each message in a bounded inbox (sensors.inbox) and never waits: it also
sends the keepalive pings, and a thread waiting for a slow consumer let the broker drop the connection. The
reader thread parses and fills the buffer (with ``policy="block"`` it waits for the consumer there). A flood
the reader cannot keep up with finds the inbox full: those messages are dropped, counted in
``dropped_messages`` and logged; the ones kept keep their order.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt

from sensors.inbox import Inbox
from sensors.sources.base import LineSource
from sensors.sources.parse import LineParser, StreamFormat

log = logging.getLogger("sensors.sources")


class MqttSource(LineSource):
    name = "mqtt"

    def __init__(self, fmt: StreamFormat, topic: str, host: str = "127.0.0.1", port: int = 1883,
                 unit: str | None = None, username: str | None = None, password: str | None = None,
                 client_id: str = "", tls: bool = False, keepalive: int = 30, inbox: int = 1000,
                 inbox_bytes: int = 4 * 2**20, **kw) -> None:
        """``inbox`` / ``inbox_bytes``: messages (and their bytes) held between paho's thread and the reader."""
        super().__init__(fmt, unit=unit or topic, **kw)
        self.topic, self.host, self.mqtt_port, self.keepalive = topic, host, port, keepalive
        self.connected = False
        self.subscribed = threading.Event()  # the broker acknowledged the subscription: what is published now arrives
        self.inbox: Inbox[tuple[str, bytes]] = Inbox(inbox, inbox_bytes, log, f"mqtt:{topic} inbox")
        self._parsers: dict[str, LineParser] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()

    @property
    def dropped_messages(self) -> int:
        """Messages that found the inbox full (the reader did not keep up): counted, logged, lost."""
        return self.inbox.dropped

    def _wildcard(self) -> bool:
        return "+" in self.topic or "#" in self.topic

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code == 0:
            self.connected = True
            client.subscribe(self.topic, qos=0)
        else:
            self._disconnected(f"connect refused: {reason_code}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        self.subscribed.clear()
        if not self._stop.is_set():
            self._disconnected(f"broker connection lost: {reason_code}")

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        """Runs on paho's network thread: queue the message or drop it, never wait."""
        self.inbox.offer((msg.topic, bytes(msg.payload)), len(msg.payload), msg.topic)

    def _feed(self, topic: str, payload: bytes) -> None:
        """Parse one message (reader thread) and buffer its samples, waiting for room under ``block``."""
        unit = topic if self._wildcard() else self.unit
        parser = self._parsers.get(unit)
        if parser is None:
            parser = self._parsers[unit] = LineParser(self.fmt, unit, self.stats, where=f"mqtt:{unit}")
        self._put(parser.feed_many(payload.split(b"\n") if payload.strip() else [payload]))

    def _run(self) -> None:
        try:
            self.client.connect_async(self.host, self.mqtt_port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            self._disconnected(f"cannot connect: {exc}")
            return
        self.client.loop_start()
        while not self._stop.is_set():
            got = self.inbox.get(timeout=0.2)
            if got is not None:
                self._feed(*got)
        self.client.disconnect()
        self.client.loop_stop()
