"""Samples published on an MQTT sensor topic (one or more CSV/JSON lines per message).

With a wildcard topic (``sensors/+/raw``) every concrete topic is its own stream and unit,
with its own timestamp order. paho reconnects by itself; each lost connection is counted as
``disconnected``. The broker's ACLs decide who may publish there.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

from sensors.sources.base import LineSource
from sensors.sources.parse import LineParser, StreamFormat


class MqttSource(LineSource):
    name = "mqtt"

    def __init__(self, fmt: StreamFormat, topic: str, host: str = "127.0.0.1", port: int = 1883,
                 unit: str | None = None, username: str | None = None, password: str | None = None,
                 client_id: str = "", tls: bool = False, **kw) -> None:
        super().__init__(fmt, unit=unit or topic, **kw)
        self.topic, self.host, self.mqtt_port = topic, host, port
        self.connected = False
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
        if not self._stop.is_set():
            self._disconnected(f"broker connection lost: {reason_code}")

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        unit = msg.topic if self._wildcard() else self.unit
        parser = self._parsers.get(unit)
        if parser is None:
            parser = self._parsers[unit] = LineParser(self.fmt, unit, self.stats, where=f"mqtt:{unit}")
        batch = parser.feed_many(msg.payload.split(b"\n") if msg.payload.strip() else [msg.payload])
        if batch is not None:
            self.buffer.put(batch, timeout=1.0)

    def _run(self) -> None:
        try:
            self.client.connect_async(self.host, self.mqtt_port, keepalive=30)
        except (OSError, ValueError) as exc:
            self._disconnected(f"cannot connect: {exc}")
            return
        self.client.loop_start()
        self._stop.wait()
        self.client.disconnect()
        self.client.loop_stop()
