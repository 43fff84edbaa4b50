"""What a wearable's GATT notification carries, and the pure decoder of one notification.

A ``NotificationFormat`` describes one notification: header fields in order (hex literals the
payload must start with, an optional sequence counter ``seq:TYPE`` and device timestamp ``t:TYPE``),
then ``samples`` samples (0: as many as the payload holds) of ``sum(modalities)`` values of one
``value`` type each. Stored value = wire value × ``scale``, channels in ``axes`` order.

Preset ``polar-h10-acc``: the Polar H10 chest strap's accelerometer stream, as the Polar
Measurement Data (PMD) specification of the Polar BLE SDK documents it
(github.com/polarofficial/polar-ble-sdk, technical_documentation/Polar_Measurement_Data_Specification.pdf):
PMD service ``FB005C80-…``, data characteristic ``FB005C82-…`` (notify), control point ``FB005C81-…``.
A data frame is ``02`` (measurement type ACC), a uint64 little-endian timestamp in nanoseconds of the
frame's last sample, ``01`` (frame type: uncompressed 16-bit samples), then samples of x, y, z as int16
little-endian in milli-g; as many samples as the negotiated MTU allows. Streaming starts when the
gateway writes ``02 02 00 01 C8 00 01 01 10 00 02 01 08 00`` to the control point (start ACC:
200 Hz, 16-bit, range 8 g). Stored as ``acce`` in g.

Nothing a device sends can raise out of ``decode`` except ``MalformedSample`` (reason ``header``,
``truncated``, ``length`` or ``non_finite``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np

from sensors.sources.parse import MalformedSample

VALUE_TYPES = {  # name -> numpy dtype (without byte order)
    "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
    "int64": "i8", "uint64": "u8", "float16": "f2", "float32": "f4", "float64": "f8",
}
MAX_NOTIFICATION = 512  # bytes: the largest ATT value; anything longer is not a notification


@dataclass(frozen=True)
class HeaderField:
    """One field before the samples: a literal the payload must carry, or a ``seq`` / ``t`` number."""

    kind: str  # "literal", "seq" or "t"
    literal: bytes = b""
    dtype: str = ""

    @property
    def size(self) -> int:
        return len(self.literal) if self.kind == "literal" else np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class NotificationFormat:
    """How to turn one notification of the ``characteristics`` into samples (see module doc)."""

    characteristics: tuple[str, ...]   # notify characteristics (UUIDs); each is its own stream and unit
    modalities: dict[str, int] = field(default_factory=lambda: {"acce": 3})
    value: str = "int16"               # wire type of every sample value (VALUE_TYPES)
    scale: float = 1.0                 # stored value = wire value * scale
    axes: tuple[int, ...] = ()         # stored channel k = wire value axes[k] of a sample; () = wire order
    samples: int = 1                   # samples per notification; 0 = as many as the payload holds
    header: tuple[str, ...] = ()       # e.g. ("02", "t:uint64", "01") or ("seq:uint16",)
    byte_order: str = "little"
    time_scale: float = 1.0            # device timestamp unit in seconds (1e-9: nanoseconds)
    time_of: str = "first"             # the sample the timestamp stamps: "first" or "last"
    rate_hz: float = 50.0              # nominal sampling rate: the spacing of samples in a notification
    start: tuple[tuple[str, bytes], ...] = ()  # (characteristic, bytes) written after subscribing
    reorder: int = 4                   # notifications held back to put reordered ones in sequence

    def __post_init__(self) -> None:
        if not self.characteristics or not all(isinstance(c, str) and c for c in self.characteristics):
            raise ValueError("characteristics must list at least one characteristic UUID")
        if not self.modalities or any(int(c) < 1 for c in self.modalities.values()):
            raise ValueError("modalities must map names to channel counts >= 1")
        if self.value not in VALUE_TYPES:
            raise ValueError(f"value must be one of {', '.join(VALUE_TYPES)}, got {self.value!r}")
        if sorted(self.axes) != list(range(len(self.axes))) or (self.axes and len(self.axes) != self.channels):
            raise ValueError(f"axes must be an order of 0..{self.channels - 1}, got {list(self.axes)}")
        if self.byte_order not in ("little", "big"):
            raise ValueError("byte_order must be 'little' or 'big'")
        if self.time_of not in ("first", "last"):
            raise ValueError("time_of must be 'first' or 'last'")
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise ValueError("scale must be a finite number != 0")
        for name, v in (("time_scale", self.time_scale), ("rate_hz", self.rate_hz)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0")
        if self.samples < 0 or self.reorder < 0:
            raise ValueError("samples and reorder must be >= 0")
        header = self.fields  # parses the header: ValueError for a bad token
        if sum(f.kind == "seq" for f in header) > 1 or sum(f.kind == "t" for f in header) > 1:
            raise ValueError("header may name seq and t once each")

    @property
    def channels(self) -> int:
        return sum(self.modalities.values())

    @cached_property
    def fields(self) -> tuple[HeaderField, ...]:
        """The parsed header (computed once; ValueError for a bad token)."""
        out = []
        for token in self.header:
            kind, sep, type_name = token.partition(":")
            if sep:
                if kind not in ("seq", "t") or type_name not in VALUE_TYPES or (
                        kind == "seq" and not VALUE_TYPES[type_name].startswith("u")):
                    raise ValueError(f"header field {token!r}: use seq:uint8|16|32|64, t:TYPE or a hex literal")
                out.append(HeaderField(kind, dtype=self._dtype(type_name)))
            else:
                try:
                    literal = bytes.fromhex(token)
                except ValueError:
                    raise ValueError(f"header field {token!r}: use seq:uint8|16|32|64, t:TYPE or a hex literal") \
                        from None
                if not literal:
                    raise ValueError("an empty header literal")
                out.append(HeaderField("literal", literal=literal))
        return tuple(out)

    def _dtype(self, type_name: str) -> str:
        return ("<" if self.byte_order == "little" else ">") + VALUE_TYPES[type_name]

    @cached_property
    def has_seq(self) -> bool:
        return any(f.kind == "seq" for f in self.fields)

    @cached_property
    def seq_modulus(self) -> int:
        return next((1 << (8 * f.size) for f in self.fields if f.kind == "seq"), 0)


@dataclass(frozen=True)
class Notification:
    """One decoded notification: ``values`` [n, channels] float32 in stored units."""

    values: np.ndarray
    seq: int | None = None
    device_t: float | None = None  # seconds on the wearable's clock (untrusted)


class Decoder:
    """Decodes notifications of one format; the header is parsed once."""

    def __init__(self, fmt: NotificationFormat) -> None:
        self.fmt = fmt
        self.fields = fmt.fields
        self.dtype = np.dtype(fmt._dtype(fmt.value))
        self.sample_size = self.dtype.itemsize * fmt.channels
        self.axes = list(fmt.axes) if fmt.axes else None

    def decode(self, payload: bytes) -> Notification:
        """One notification's samples, or ``MalformedSample`` naming what is wrong."""
        if len(payload) > MAX_NOTIFICATION:
            raise MalformedSample("length", f"{len(payload)} bytes, a notification carries at most {MAX_NOTIFICATION}")
        pos, seq, device_t = 0, None, None
        for f in self.fields:
            end = pos + f.size
            if end > len(payload):
                raise MalformedSample("truncated", f"{len(payload)} bytes end inside the header: {payload.hex()}")
            chunk = payload[pos:end]
            if f.kind == "literal" and chunk != f.literal:
                raise MalformedSample("header", f"byte {pos}: expected {f.literal.hex()}, got {chunk.hex()}")
            if f.kind != "literal":
                number = np.frombuffer(chunk, f.dtype)[0].item()
                if f.kind == "seq":
                    seq = int(number)
                else:
                    device_t = float(number) * self.fmt.time_scale
            pos = end
        rest = len(payload) - pos
        n = self.fmt.samples or rest // self.sample_size
        if rest < n * self.sample_size or n == 0 or (not self.fmt.samples and rest % self.sample_size):
            raise MalformedSample("truncated", f"{rest} bytes of samples, a sample is {self.sample_size}: "
                                               f"{payload[:40].hex()}")
        if rest > n * self.sample_size:
            raise MalformedSample("length", f"{rest} bytes of samples, expected {n * self.sample_size}")
        values = np.frombuffer(payload, self.dtype, n * self.fmt.channels, pos).reshape(n, self.fmt.channels)
        values = values.astype(np.float64) * self.fmt.scale
        if self.axes is not None:
            values = values[:, self.axes]
        values = values.astype(np.float32)
        if not np.isfinite(values).all() or (device_t is not None and not math.isfinite(device_t)):
            raise MalformedSample("non_finite", payload[:40].hex())
        return Notification(values, seq, device_t)


PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"
PMD_START_ACC_200HZ = bytes.fromhex("02020001c8000101100002010800")

PRESETS: dict[str, NotificationFormat] = {
    "polar-h10-acc": NotificationFormat(
        characteristics=(PMD_DATA,), modalities={"acce": 3}, value="int16", scale=1e-3, samples=0,
        header=("02", "t:uint64", "01"), time_scale=1e-9, time_of="last", rate_hz=200.0,
        start=((PMD_CONTROL, PMD_START_ACC_200HZ),)),
}
DEFAULT_PRESET = "polar-h10-acc"


def format_from_dict(table: dict) -> NotificationFormat:
    """A format from a TOML table: ``preset = NAME`` plus overrides, or every key spelled out.

    ``start`` is a list of ``{characteristic = UUID, value = "hex"}``; lists become tuples.
    Raises ValueError naming the bad key.
    """
    table = dict(table)
    base = table.pop("preset", None)
    known = set(NotificationFormat.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in the BLE format (keys: {', '.join(sorted(known))})")
    if base is not None and base not in PRESETS:
        raise ValueError(f"unknown BLE preset {base!r} (presets: {', '.join(PRESETS)})")
    kw = {f.name: getattr(PRESETS[base], f.name) for f in fields(NotificationFormat)} if base is not None else {}
    for key, value in table.items():
        if key == "start":
            try:
                value = tuple((str(w["characteristic"]), bytes.fromhex(w["value"])) for w in value)
            except (TypeError, KeyError, ValueError) as exc:
                raise ValueError("start must be a list of {characteristic = UUID, value = \"hex\"}") from exc
        elif key == "modalities":
            if not isinstance(value, dict) or not all(isinstance(c, int) for c in value.values()):
                raise ValueError("modalities must be a table like {acce = 3}")
        elif key in ("characteristics", "axes", "header"):
            if not isinstance(value, list):
                raise ValueError(f"{key} must be a list")
            value = tuple(value)
        kw[key] = value
    try:
        return NotificationFormat(**kw)
    except TypeError as exc:  # a wrong type where a number or string belongs
        raise ValueError(f"BLE format: {exc}") from None
