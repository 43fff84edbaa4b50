"""Samples piped into the gateway process (``sensor-tool | fedmekt client --source stdin``)."""

from __future__ import annotations

import os
import select
import sys
from typing import BinaryIO

from sensors.sources.base import LineSource
from sensors.sources.parse import LineSplitter, StreamFormat


class StdinSource(LineSource):
    """Reads lines from a binary stream (default ``sys.stdin.buffer``) until EOF or ``close()``; ``name`` is
    what log lines call it (``csv`` for a file read with ``--source csv:PATH``)."""

    name = "stdin"

    def __init__(self, fmt: StreamFormat, stream: BinaryIO | None = None, unit: str = "stdin", name: str = "stdin",
                 **kw) -> None:
        self.name = name
        super().__init__(fmt, unit=unit, **kw)
        self.stream = stream if stream is not None else sys.stdin.buffer

    def _run(self) -> None:
        fd = self.stream.fileno()
        splitter = LineSplitter(self.stats, f"{self.name}:{self.unit}")
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)  # wake up to notice close()
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65_536)
            except OSError as exc:
                self._disconnected(str(exc))
                return
            if not chunk:  # EOF: a last line without newline still counts
                self._feed_lines(splitter.push(b"\n"))
                return
            self._feed_lines(splitter.push(chunk))
