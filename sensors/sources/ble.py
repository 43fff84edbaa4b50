"""A Bluetooth Low Energy wearable streaming IMU samples as GATT notifications (needs the ``[ble]`` extra: bleak).

    with BleSource("Polar H10 1A2B3C4D", PRESETS["polar-h10-acc"]) as src:
        for batch in src:
            store.append(batch)

The reader thread runs an asyncio loop: scan for the wearable by address (``AA:BB:…``, or the
UUID macOS gives it) or by advertised name, connect, subscribe to the format's characteristics,
write its ``start`` commands, and decode every notification (sensors.sources.ble_stream: order,
losses, the wearable's clock mapped onto the gateway's). When the link drops or the wearable is
not found, it is counted as ``disconnected`` and retried after ``retry_s``, doubling up to
``max_retry_s`` until a connection succeeds again.

Gateway time is ``time.time()`` at start plus ``time.monotonic()`` since: a wall clock step while
streaming cannot reorder the store. ``backends=(scanner class, client class)`` is bleak's
``backend=`` hook (a test's scripted or virtual radio); None picks the platform's (BlueZ on a Pi).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from functools import partial

from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError

from sensors.recording import SampleBatch
from sensors.sources.base import Source
from sensors.sources.ble_format import NotificationFormat
from sensors.sources.ble_stream import BleCounters, NotificationStream

log = logging.getLogger("sensors.sources")
PUT_WAIT_S = 1.0   # longest a notification waits for buffer room under "block" before it counts as dropped
ADDRESS = re.compile(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")


def is_address(device: str) -> bool:
    """A Bluetooth address (or a macOS device UUID) rather than an advertised name."""
    return bool(ADDRESS.match(device))


class BleSource(Source):
    name = "ble"

    def __init__(self, device: str, fmt: NotificationFormat, unit: str | None = None, scan_timeout: float = 10.0,
                 connect_timeout: float = 20.0, max_retry_s: float = 30.0, hold_s: float = 0.5,
                 backends: tuple[type, type] | None = None, **kw) -> None:
        super().__init__(unit=unit or device, **kw)
        self.device, self.fmt = device, fmt
        self.scan_timeout, self.connect_timeout, self.max_retry_s = scan_timeout, connect_timeout, max_retry_s
        self.hold_s = hold_s  # longest a notification waits in the reorder window when the stream pauses
        self.scanner_backend, self.client_backend = backends or (None, None)
        self.counters = BleCounters()
        self.connected = threading.Event()
        self.streams = {
            ch: NotificationStream(fmt, self.unit if len(fmt.characteristics) == 1 else f"{self.unit}/{ch}",
                                   self.stats, self.counters, where=f"ble:{self.unit}")
            for ch in fmt.characteristics}
        self._wall0, self._mono0 = time.time(), time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._astop: asyncio.Event | None = None

    def now(self) -> float:
        """Gateway time in seconds: the wall clock at start, advanced by the monotonic clock."""
        return self._wall0 + (time.monotonic() - self._mono0)

    # -- reader thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(self._main_async())

    async def _main_async(self) -> None:
        self._loop, self._astop = asyncio.get_running_loop(), asyncio.Event()
        if self._stop.is_set():
            return
        delay = self.retry_s
        while not self._stop.is_set():
            found = None
            try:
                found = await self._unless_stopped(self._find())
                if self._stop.is_set():
                    return
                if found is None:
                    self._disconnected(f"{self.device!r} not found within {self.scan_timeout:g} s")
                else:
                    await self._session(found)
                    delay = self.retry_s  # it connected: the next drop starts the backoff afresh
                    if self._stop.is_set():
                        return
                    self._disconnected("link lost")
            except (BleakError, OSError, asyncio.TimeoutError, EOFError) as exc:
                if self._stop.is_set():
                    return
                hint = "no Bluetooth stack to scan with (BlueZ running? an adapter?): " \
                    if found is None and isinstance(exc, OSError) else ""
                self._disconnected(f"{hint}{type(exc).__name__}: {exc}")
                self._flush()
            try:
                await asyncio.wait_for(self._astop.wait(), delay)
                return
            except asyncio.TimeoutError:
                delay = min(2 * delay, self.max_retry_s)

    async def _unless_stopped(self, coro):
        """``coro``'s result, or None as soon as the source closes (a scan or connect is cancelled)."""
        task, stop = asyncio.ensure_future(coro), asyncio.ensure_future(self._astop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
        return task.result() if not task.cancelled() else None

    def _disconnected(self, detail: str) -> None:
        self.stats.rejected["disconnected"] += 1
        log.warning("ble:%s disconnected (%s); retrying", self.unit, detail)

    async def _find(self):
        kw = {"backend": self.scanner_backend} if self.scanner_backend is not None else {}
        if is_address(self.device):
            return await BleakScanner.find_device_by_address(self.device, timeout=self.scan_timeout, **kw)
        return await BleakScanner.find_device_by_name(self.device, timeout=self.scan_timeout, **kw)

    async def _session(self, device) -> None:
        """One connection: subscribe, start streaming, wait until the link drops or the source closes."""
        lost = asyncio.Event()
        loop = asyncio.get_running_loop()
        kw = {"backend": self.client_backend} if self.client_backend is not None else {}
        client = BleakClient(device, disconnected_callback=lambda _: loop.call_soon_threadsafe(lost.set),
                             timeout=self.connect_timeout, **kw)
        await self._unless_stopped(client.connect())
        try:
            if self._stop.is_set():
                return
            self.counters.connects += 1
            for stream in self.streams.values():
                stream.restart()
            for ch, stream in self.streams.items():
                await client.start_notify(ch, partial(self._on_notify, stream))
            for ch, value in self.fmt.start:
                await client.write_gatt_char(ch, value, response=True)
            self.connected.set()
            log.info("ble:%s connected to %s, %d characteristic(s)", self.unit, device, len(self.streams))
            waits = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._astop.wait())]
            try:
                while not any(w.done() for w in waits):
                    await asyncio.wait(waits, timeout=self.hold_s / 2, return_when=asyncio.FIRST_COMPLETED)
                    for stream in self.streams.values():  # a paused stream: release what the reorder window holds
                        self._put(stream.release_stale(self.now(), self.hold_s))
            finally:
                for w in waits:
                    w.cancel()
        finally:
            self.connected.clear()
            self._flush()
            if client.is_connected:
                try:
                    await client.disconnect()
                except (BleakError, OSError, asyncio.TimeoutError, EOFError) as exc:
                    log.debug("ble:%s disconnect: %s", self.unit, exc)

    def _on_notify(self, stream: NotificationStream, _characteristic, data: bytearray) -> None:
        self._put(stream.feed(bytes(data), self.now()))

    def _put(self, batch: SampleBatch | None) -> bool:
        """Hand ``batch`` to the buffer from the event loop. A peripheral cannot be paused and a blocked loop
        misses its notifications, so under "block" this waits at most ``PUT_WAIT_S`` for room; what still does
        not fit is counted in the buffer's ``dropped``."""
        if batch is None:
            return True
        done, deadline = 0, time.monotonic() + PUT_WAIT_S
        while done < len(batch) and not self.buffer.closed and (left := deadline - time.monotonic()) > 0:
            done += self.buffer.put(batch.slice(done), timeout=left)
        if done < len(batch) and not self.buffer.closed:   # closing the source drops nothing it could keep
            self.buffer.count_lost(len(batch) - done)
        return done == len(batch)

    def _flush(self) -> None:
        for stream in self.streams.values():
            self._put(stream.flush())

    def _close_transport(self) -> None:
        loop, astop = self._loop, self._astop
        if loop is not None and astop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(astop.set)
            except RuntimeError:  # the loop finished meanwhile
                pass
