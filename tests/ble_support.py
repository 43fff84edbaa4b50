"""Radios for the BLE source without Bluetooth hardware, plugged in through bleak's ``backend=`` hook.

``scripted_backends(wearable)``: a scanner and a client whose wearable is a script (advertises after
some scans, refuses connections, plays notifications, drops the link). ``bumble_backends(air)``: the
gateway side is a real Bumble host on a virtual controller, linked by a ``LocalLink`` to a Bumble
virtual wearable serving the Polar PMD GATT service; only the radio is virtual.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError

from sensors.sources.ble_format import PMD_CONTROL, PMD_DATA, PMD_SERVICE, PMD_START_ACC_200HZ


def h10_frame(t_ns: int, samples) -> bytes:
    """A Polar H10 PMD ACC data frame (sensors.sources.ble_format): 02, uint64 ns, 01, x/y/z int16 mG each."""
    return b"\x02" + struct.pack("<Q", t_ns) + b"\x01" + b"".join(struct.pack("<3h", *s) for s in samples)


def h10_frames(n: int, per_frame: int = 10, t0_ns: int = 7 * 10**9) -> list[bytes]:
    """``n`` consecutive 200 Hz frames; sample k of the stream is (k, -k, 1000) mG (x encodes its index)."""
    period = 5_000_000
    return [h10_frame(t0_ns + ((i + 1) * per_frame - 1) * period,
                      [(k, -k, 1000) for k in range(i * per_frame, (i + 1) * per_frame)]) for i in range(n)]


def service_collection(service_uuid: str, characteristics: list[tuple[Any, int, str, list[str]]]):
    """A bleak service collection of one service: (backend object, handle, uuid, properties) per characteristic."""
    services = BleakGATTServiceCollection()
    service = BleakGATTService(None, 1, service_uuid)
    services.add_service(service)
    for obj, handle, uuid, props in characteristics:
        services.add_characteristic(BleakGATTCharacteristic(obj, handle, uuid, props, lambda: 20, service))
    return services


def advertisement(name: str) -> AdvertisementData:
    return AdvertisementData(local_name=name, manufacturer_data={}, service_data={}, service_uuids=[PMD_SERVICE],
                             tx_power=None, rssi=-60, platform_data=())


# -- scripted ------------------------------------------------------------------------------------
@dataclass
class ScriptedWearable:
    """What the scripted radio does: ``sessions[i]`` is what connection i delivers, then the link drops
    (the last session stays connected). Everything the gateway did is recorded."""

    name: str = "Polar H10 0A1B2C3D"
    address: str = "A0:9E:1A:0A:1B:2C"
    sessions: list[list[bytes]] = field(default_factory=list)
    interval: float = 0.05         # seconds between notifications: a 10-sample frame at 200 Hz, in real time
    hidden_scans: int = 0          # scans that find nothing before it advertises
    refused_connects: int = 0      # connection attempts that fail before one succeeds
    scans: int = 0
    connects: int = 0              # attempts, refused ones included
    sessions_started: int = 0
    writes: list[tuple[str, bytes]] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    delivered: int = 0             # notifications handed to the gateway
    done: threading.Event = field(default_factory=threading.Event)  # the last session was delivered


def scripted_backends(wearable: ScriptedWearable) -> tuple[type, type]:
    class Scanner(BaseBleakScanner):
        def __init__(self, detection_callback, service_uuids, scanning_mode="active", **kwargs) -> None:
            super().__init__(detection_callback, service_uuids)
            self._task: asyncio.Task | None = None

        async def start(self) -> None:
            self.seen_devices = {}
            wearable.scans += 1
            if wearable.scans > wearable.hidden_scans:
                self._task = asyncio.ensure_future(self._advertise())

        async def _advertise(self) -> None:
            while True:  # advertising events until the scan stops
                adv = advertisement(wearable.name)
                self.call_detection_callbacks(
                    self.create_or_update_device(wearable.address, wearable.address, wearable.name, None, adv), adv)
                await asyncio.sleep(0.01)

        async def stop(self) -> None:
            if self._task is not None:
                self._task.cancel()

    class Client(BaseBleakClient):
        def __init__(self, address_or_ble_device, **kwargs) -> None:
            super().__init__(address_or_ble_device, **kwargs)
            self._connected = False
            self._callbacks: dict[str, Any] = {}
            self._session: list[bytes] = []
            self._last = False

        @property
        def mtu_size(self) -> int:
            return 247

        @property
        def is_connected(self) -> bool:
            return self._connected

        async def connect(self, pair: bool, **kwargs) -> None:
            wearable.connects += 1
            if wearable.refused_connects > 0:
                wearable.refused_connects -= 1
                raise BleakError("scripted: connection failed (0x3e)")
            i = min(wearable.sessions_started, len(wearable.sessions) - 1)
            wearable.sessions_started += 1
            self._session, self._last = wearable.sessions[i], i == len(wearable.sessions) - 1
            self.services = service_collection(PMD_SERVICE, [(None, 3, PMD_CONTROL, ["write", "indicate"]),
                                                             (None, 5, PMD_DATA, ["notify"])])
            self._connected = True

        async def disconnect(self) -> None:
            self._connected = False

        async def start_notify(self, characteristic, callback, **kwargs) -> None:
            wearable.subscribed.append(characteristic.uuid)
            self._callbacks[characteristic.uuid] = callback

        async def write_gatt_char(self, characteristic, data, response: bool) -> None:
            wearable.writes.append((characteristic.uuid, bytes(data)))
            if characteristic.uuid == PMD_CONTROL and bytes(data) == PMD_START_ACC_200HZ:
                asyncio.get_running_loop().call_soon(asyncio.ensure_future, self._play())

        async def _play(self) -> None:
            for payload in self._session:
                await asyncio.sleep(wearable.interval)  # a wearable cannot sample faster than real time
                self._callbacks[PMD_DATA](bytearray(payload))
                wearable.delivered += 1
            if self._last:
                wearable.done.set()
            else:  # the wearable walked out of range
                self._connected = False
                if self._disconnected_callback is not None:
                    self._disconnected_callback()

        async def pair(self, *args, **kwargs) -> None:
            raise NotImplementedError

        async def unpair(self) -> None:
            raise NotImplementedError

        async def read_gatt_char(self, characteristic, **kwargs) -> bytearray:
            raise BleakError("scripted: not readable")

        async def read_gatt_descriptor(self, descriptor, **kwargs) -> bytearray:
            raise BleakError("scripted: not readable")

        async def write_gatt_descriptor(self, descriptor, data) -> None:
            raise BleakError("scripted: no descriptors")

        async def stop_notify(self, characteristic) -> None:
            self._callbacks.pop(characteristic.uuid, None)

    return Scanner, Client
