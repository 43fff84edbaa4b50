"""Samples sent as UDP datagrams (one or more CSV/JSON lines each), e.g. from an ESP32 on Wi-Fi.

UDP has no sender authentication: bind to the gateway's local interface and keep it off
untrusted networks. Datagrams from any sender are parsed as one stream (one timestamp order).
"""

from __future__ import annotations

import socket

from sensors.sources.base import LineSource
from sensors.sources.parse import StreamFormat


class UdpSource(LineSource):
    name = "udp"

    def __init__(self, fmt: StreamFormat, host: str = "127.0.0.1", port: int = 0, unit: str = "udp", **kw) -> None:
        super().__init__(fmt, unit=unit, **kw)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65_535)
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    self._disconnected(str(exc))
                return
            self._feed_lines(data.split(b"\n") if data.strip() else [data])

    def _close_transport(self) -> None:
        self.sock.close()
