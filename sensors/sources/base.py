"""Common life cycle of live sources: a reader thread fills a bounded buffer; the consumer iterates.

    with UdpSource(fmt, port=9000) as src:
        for batch in src:            # SampleBatch, ≤ batch_size samples of one unit
            store.append(batch)

A source never raises because of what a device sends: bad samples are counted in ``stats``
(see sensors.sources.parse) and an I/O failure of the transport is counted as ``disconnected``
and retried after ``retry_s``. Iteration ends when the source is exhausted (replay, stdin EOF)
or ``close()`` is called, after the buffer is drained.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from sensors.recording import SampleBatch
from sensors.sources.buffer import SampleBuffer
from sensors.sources.parse import LineParser, SourceStats, StreamFormat

log = logging.getLogger("sensors.sources")


class Source:
    """Base class: subclasses implement ``_run`` (called in the reader thread until it returns)."""

    name = "source"

    def __init__(self, unit: str = "live", buffer_size: int = 65_536, policy: str = "drop_oldest",
                 batch_size: int = 256, retry_s: float = 1.0) -> None:
        self.unit = unit
        self.buffer = SampleBuffer(buffer_size, policy)
        self.batch_size = batch_size
        self.retry_s = retry_s
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> Source:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"{self.name}-reader", daemon=True)
            self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # a bug or an unexpected transport error must not kill the gateway
            log.exception("%s: reader stopped by an unexpected error", self.name)
            self.stats.rejected["error"] += 1
        finally:
            self._done.set()
            self.buffer.close()

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop reading; samples already buffered can still be iterated."""
        self._stop.set()
        self._close_transport()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.buffer.close()

    def _close_transport(self) -> None:
        """Unblock the reader thread (close sockets, ports); default: nothing to do."""

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- consumption --------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Samples discarded by the drop-oldest back-pressure policy."""
        return self.buffer.dropped

    def get(self, timeout: float | None = 0.5) -> SampleBatch | None:
        """One batch or None if nothing arrived within ``timeout``."""
        self.start()
        return self.buffer.get(self.batch_size, timeout)

    def __iter__(self) -> Iterator[SampleBatch]:
        self.start()
        while True:
            batch = self.buffer.get(self.batch_size, timeout=0.2)
            if batch is not None:
                yield batch
            elif (self._done.is_set() or self._stop.is_set()) and len(self.buffer) == 0:
                return

    def _wait(self, seconds: float) -> bool:
        """Sleep unless asked to stop; True if a stop was requested."""
        return self._stop.wait(seconds)

    def _put(self, batch: SampleBatch | None) -> bool:
        """Hand ``batch`` to the buffer from the reader thread; False if the source closed first. Under "block"
        this waits for room until the source is closed (so the transport, not a silent drop, takes the
        back-pressure); "drop_oldest" never waits."""
        if batch is None:
            return True
        done = 0
        while done < len(batch):
            done += self.buffer.put(batch.slice(done), timeout=0.5)
            if done < len(batch) and (self._stop.is_set() or self.buffer.closed):
                return False
        return True


class LineSource(Source):
    """A source whose transport delivers text lines in the ``StreamFormat`` (serial, UDP, MQTT, stdin)."""

    def __init__(self, fmt: StreamFormat, unit: str = "live", **kw) -> None:
        super().__init__(unit=unit, **kw)
        self.fmt = fmt
        self.parser = LineParser(fmt, unit, self.stats, where=f"{self.name}:{unit}")

    def _feed_lines(self, lines) -> None:
        self._put(self.parser.feed_many(lines))

    def _disconnected(self, detail: str) -> None:
        self.stats.rejected["disconnected"] += 1
        log.warning("%s:%s disconnected (%s); retrying in %.1f s", self.name, self.unit, detail, self.retry_s)
