"""A microcontroller on a serial port (USB CDC, UART) printing one CSV/JSON sample per line.

``url`` is anything pyserial's ``serial_for_url`` accepts: ``/dev/ttyACM0``, ``loop://``,
``rfc2217://host:port``, ``socket://host:port``. An unplugged or failing port is counted as
``disconnected`` and reopened every ``retry_s`` until ``close()``.
"""

from __future__ import annotations

import contextlib

import serial

from sensors.sources.base import LineSource
from sensors.sources.parse import LineSplitter, StreamFormat


class SerialSource(LineSource):
    name = "serial"

    def __init__(self, url: str, fmt: StreamFormat, baudrate: int = 115_200, unit: str | None = None, **kw) -> None:
        super().__init__(fmt, unit=unit or url, **kw)
        self.url, self.baudrate = url, baudrate
        self.port: serial.SerialBase | None = None

    def _open(self) -> serial.SerialBase:
        return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self._disconnected(f"open failed: {exc}")
                if self._wait(self.retry_s):
                    return
                continue
            splitter = LineSplitter(self.stats, f"serial:{self.unit}")
            try:
                while not self._stop.is_set():
                    chunk = self.port.read(max(1, self.port.in_waiting))
                    if chunk:
                        self._feed_lines(splitter.push(chunk))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                if self._stop.is_set():  # closed by us; pyserial may raise TypeError/AttributeError on close
                    return
                self._disconnected(str(exc))
            finally:
                self._close_transport()
            if self._wait(self.retry_s):
                return

    def _close_transport(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
