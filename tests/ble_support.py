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


# -- Bumble ----------------------------------------------------------------------------------------
_PROPERTY_NAMES = {0x02: "read", 0x04: "write-without-response", 0x08: "write", 0x10: "notify", 0x20: "indicate"}


@dataclass
class VirtualAir:
    """A Bumble virtual wearable and the gateway's Bumble host, each on its own virtual controller, joined by a
    ``LocalLink``. Built on the event loop that first uses it (the BLE source's reader loop).

    The wearable advertises ``name`` and serves the Polar PMD service: a control point and a notifying data
    characteristic. When a gateway writes the ACC start command it streams ``frames`` in real time (one per
    ``interval``); with ``drop_after`` it cuts the link after that many notifications of a connection, then
    advertises again and resumes where it stopped on the next start command."""

    frames: list[bytes]
    name: str = "Polar H10 0A1B2C3D"
    interval: float = 0.005
    drop_after: int = 0
    sent: int = 0                   # notifications sent (and acknowledged by the wearable's host)
    drops: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    timings: dict[str, float] = field(default_factory=dict)  # monotonic time of each milestone
    gateway: Any = None
    wearable: Any = None

    async def ensure(self) -> None:
        """Power both stacks on and start advertising, once."""
        if self.gateway is not None:
            return
        from bumble import gatt
        from bumble.controller import Controller
        from bumble.core import UUID, AdvertisingData
        from bumble.device import Device
        from bumble.hci import Address
        from bumble.host import Host
        from bumble.link import LocalLink
        from bumble.transport.common import AsyncPipeSink

        self.timings["start"] = asyncio.get_running_loop().time()
        link = LocalLink()
        radios = [Controller(name, link=link) for name in ("wearable", "gateway")]
        wearable, gateway = (Device(address=Address(a), host=Host(c, AsyncPipeSink(c)))
                             for a, c in zip(("F0:F1:F2:F3:F4:F5", "C4:C3:C2:C1:C0:C5"), radios))
        self.gateway = gateway  # set before any await: a second caller must not build another pair
        self.wearable = wearable
        self._data = gatt.Characteristic(UUID(PMD_DATA), gatt.Characteristic.Properties.NOTIFY,
                                         gatt.Characteristic.READABLE, b"")
        control = gatt.Characteristic(UUID(PMD_CONTROL), gatt.Characteristic.Properties.WRITE,
                                      gatt.Characteristic.WRITEABLE, gatt.CharacteristicValue(write=self._on_control))
        wearable.add_service(gatt.Service(UUID(PMD_SERVICE), [control, self._data]))
        await wearable.power_on()
        await gateway.power_on()
        adv = bytes(AdvertisingData([(AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                                     (AdvertisingData.FLAGS, bytes([0x06]))]))
        await wearable.start_advertising(auto_restart=True, advertising_data=adv, advertising_interval_min=100,
                                         advertising_interval_max=100)  # ms; Bumble's default is 1 s
        self.timings["advertising"] = asyncio.get_running_loop().time()

    def _on_control(self, connection, value: bytes) -> None:
        if bytes(value) == PMD_START_ACC_200HZ:
            self.timings.setdefault("streaming", asyncio.get_running_loop().time())
            asyncio.ensure_future(self._stream(connection))

    async def _stream(self, connection) -> None:
        in_connection = 0
        while self.sent < len(self.frames):
            await asyncio.sleep(self.interval)
            if self.drop_after and in_connection == self.drop_after:
                self.drops += 1
                await connection.disconnect()  # out of range: the gateway must reconnect and start it again
                return
            await self.wearable.notify_subscribers(self._data, self.frames[self.sent])
            self.sent += 1
            in_connection += 1
        self.timings["sent"] = asyncio.get_running_loop().time()
        self.done.set()


def bumble_backends(air: VirtualAir) -> tuple[type, type]:
    """bleak scanner and client backends that drive the gateway's Bumble host (central role)."""
    from bumble.core import AdvertisingData
    from bumble.device import Peer
    from bleak.uuids import normalize_uuid_str

    def uuid_str(uuid) -> str:
        return normalize_uuid_str(uuid.to_hex_str("-"))

    class Scanner(BaseBleakScanner):
        def __init__(self, detection_callback, service_uuids, scanning_mode="active", **kwargs) -> None:
            super().__init__(detection_callback, service_uuids)

        async def start(self) -> None:
            self.seen_devices = {}
            await air.ensure()
            air.gateway.on("advertisement", self._on_advertisement)
            await air.gateway.start_scanning(filter_duplicates=False)

        def _on_advertisement(self, adv) -> None:
            name = adv.data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
            data = AdvertisementData(local_name=name, manufacturer_data={}, service_data={}, service_uuids=[],
                                     tx_power=None, rssi=adv.rssi, platform_data=(adv,))
            device = self.create_or_update_device(str(adv.address), str(adv.address), name, adv.address, data)
            self.call_detection_callbacks(device, data)

        async def stop(self) -> None:
            air.gateway.remove_listener("advertisement", self._on_advertisement)
            await air.gateway.stop_scanning()

    class Client(BaseBleakClient):
        def __init__(self, address_or_ble_device, **kwargs) -> None:
            super().__init__(address_or_ble_device, **kwargs)
            self._target = (address_or_ble_device.details if isinstance(address_or_ble_device, BLEDevice)
                            else address_or_ble_device)
            self._connection = None
            self._peer = None

        @property
        def mtu_size(self) -> int:
            return self._connection.att_mtu if self._connection is not None else 23

        @property
        def is_connected(self) -> bool:
            return self._connection is not None

        async def connect(self, pair: bool, **kwargs) -> None:
            await air.ensure()
            connection = await air.gateway.connect(self._target, timeout=self._timeout)
            connection.on("disconnection", self._on_disconnection)
            self._connection, self._peer = connection, Peer(connection)
            await self._peer.request_mtu(247)  # as BlueZ and CoreBluetooth do on every connection (default: 23)
            await self._peer.discover_services()
            await self._peer.discover_characteristics()
            services = BleakGATTServiceCollection()
            for svc in self._peer.services:
                service = BleakGATTService(svc, svc.handle, uuid_str(svc.uuid))
                services.add_service(service)
                for ch in svc.characteristics:
                    props = [n for bit, n in _PROPERTY_NAMES.items() if int(ch.properties) & bit]
                    services.add_characteristic(BleakGATTCharacteristic(ch, ch.handle, uuid_str(ch.uuid), props,
                                                                        lambda: 20, service))
            self.services = services
            air.timings.setdefault("discovered", asyncio.get_running_loop().time())

        def _on_disconnection(self, reason) -> None:
            self._connection = self._peer = None
            if self._disconnected_callback is not None:
                self._disconnected_callback()

        async def disconnect(self) -> None:
            if self._connection is not None:
                await self._connection.disconnect()

        async def start_notify(self, characteristic, callback, **kwargs) -> None:
            await self._peer.subscribe(characteristic.obj, lambda value: callback(bytearray(value)))

        async def write_gatt_char(self, characteristic, data, response: bool) -> None:
            await self._peer.write_value(characteristic.obj, bytes(data), with_response=response)

        async def pair(self, *args, **kwargs) -> None:
            raise NotImplementedError

        async def unpair(self) -> None:
            raise NotImplementedError

        async def read_gatt_char(self, characteristic, **kwargs) -> bytearray:
            return bytearray(await self._peer.read_value(characteristic.obj))

        async def read_gatt_descriptor(self, descriptor, **kwargs) -> bytearray:
            raise BleakError("bumble backend: descriptors are not exposed")

        async def write_gatt_descriptor(self, descriptor, data) -> None:
            raise BleakError("bumble backend: descriptors are not exposed")

        async def stop_notify(self, characteristic) -> None:
            await self._peer.unsubscribe(characteristic.obj)

    return Scanner, Client
