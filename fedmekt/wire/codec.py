"""Wire codec: named float tensors <-> chunked, self-describing binary MQTT payloads.

One *message* (a client's upload, the global knowledge of a round, the proxy set) is
a safetensors blob (``safetensors.numpy``; never pickle) cut into chunks. Each chunk is
one MQTT payload, a *frame*::

    b"FMK" | version u8 | header length u32 LE | JSON header (utf-8) | body bytes

The JSON header repeats the message identity in every frame (federation, round,
sender, kind, message id = first 16 hex of the body's sha256, chunk index/count,
total size, sha256, wire dtype) so any frame can be routed, deduplicated and
size-checked on its own; frame 0 also lists the tensors (name -> shape) and the
sender's modalities so a wrong upload is rejected before anything is buffered. An upload
also echoes the ``nonce`` of the (signed) round announcement it answers, so an old body
re-framed with a later round number is refused.

Decoding is strict: every field is type- and range-checked, the reassembled body
must hash to ``sha256``, the safetensors header must agree with frame 0 and with
the expected spec (``ServerEngine.expected_upload``), and every value must be
finite. Anything else raises :class:`WireError` with a one-line reason.

In ``int8`` (``fedmekt.wire.dtypes``) each tensor's codes travel with a float32 tensor of per-channel scales named
``<name>:scale``; the frame header lists the logical tensors only, and decoding returns their float32 values.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedmekt.wire.dtypes import ITEMSIZE, SCALE_SUFFIX, WIRE_DTYPES, channels, dequantize, quantize

MAGIC = b"FMK"
VERSION = 1
PREFIX = struct.Struct("<3sBI")  # magic, version, header length
KINDS = ("upload", "global", "proxy", "model")
_ST_DTYPE = {"float32": "F32", "float16": "F16", "int8": "I8"}   # safetensors' name of each wire dtype
_ST_ITEMSIZE = {_ST_DTYPE[d]: ITEMSIZE[d] for d in WIRE_DTYPES}   # the safetensors dtypes a body may hold
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_HEADER = 4096  # a frame header (JSON) never exceeds this; frames reserve it
_NAME = re.compile(r"^[A-Za-z0-9_.:\-/]{1,128}$")
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")  # \Z: "$" would let a trailing newline through
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NONCE = re.compile(r"^[0-9a-f]{1,32}$")

Tensors = dict[str, np.ndarray]
Spec = Mapping[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype), as ServerEngine.expected_upload


class WireError(ValueError):
    """A payload that must not reach the learning code; ``reason`` is one line for the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WireLimits:
    """Size limits a receiver enforces (a sender uses ``chunk_size``)."""

    chunk_size: int = DEFAULT_CHUNK_SIZE  # whole frame, header included
    max_message: int = 64 * 1024 * 1024  # reassembled body of one message
    max_round: int = 256 * 1024 * 1024  # all messages of one sender in one round

    def __post_init__(self) -> None:
        if self.chunk_size < 4 * MAX_HEADER:
            raise ValueError(f"chunk_size must be at least {4 * MAX_HEADER} bytes")
        if self.max_message < 1 or self.max_round < self.max_message:
            raise ValueError("need 1 <= max_message <= max_round")

    @property
    def max_chunks(self) -> int:
        return -(-self.max_message // self.body_step) + 1

    @property
    def body_step(self) -> int:
        """Body bytes per frame: the chunk size minus room for prefix and header."""
        return self.chunk_size - PREFIX.size - MAX_HEADER


@dataclass(frozen=True)
class Header:
    """The JSON header of one frame."""

    federation: str
    round: int
    sender: str
    kind: str
    msg: str  # message id: first 16 hex of sha256(body); equal content => equal id (idempotency key)
    index: int
    count: int
    size: int  # total body bytes of the message
    step: int  # body bytes per frame (the last one holds the rest)
    sha256: str
    dtype: str
    modalities: tuple[str, ...] = ()
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)  # frame 0 only
    nonce: str = ""  # uploads: the round announcement's nonce ("" elsewhere)

    @property
    def key(self) -> tuple[str, str, int, str]:
        """Identifies the message across its frames and across re-sends."""
        return (self.sender, self.kind, self.round, self.msg)

    def to_json(self) -> bytes:
        d = {"v": VERSION, "federation": self.federation, "round": self.round, "sender": self.sender,
             "kind": self.kind, "msg": self.msg, "index": self.index, "count": self.count, "size": self.size,
             "step": self.step, "sha256": self.sha256, "dtype": self.dtype, "modalities": list(self.modalities)}
        if self.index == 0:
            d["tensors"] = {k: list(v) for k, v in self.tensors.items()}
        if self.nonce:
            d["nonce"] = self.nonce
        return json.dumps(d, separators=(",", ":")).encode()


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _header_from_json(raw: bytes) -> Header:
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"header is not JSON: {exc.__class__.__name__}") from None
    if not isinstance(d, dict):
        raise WireError("header is not a JSON object")
    required = {"v", "federation", "round", "sender", "kind", "msg", "index", "count", "size", "step", "sha256",
                "dtype", "modalities"}
    allowed = required | {"tensors", "nonce"}
    if missing := required - d.keys():
        raise WireError(f"header lacks {sorted(missing)}")
    if extra := d.keys() - allowed:
        raise WireError(f"header has unknown keys {sorted(extra)}")
    if d["v"] != VERSION:
        raise WireError(f"unsupported header version {d['v']!r}")
    for k in ("federation", "sender"):
        if not isinstance(d[k], str) or not _ID.match(d[k]):
            raise WireError(f"bad {k} {d[k]!r}")
    if d["kind"] not in KINDS:
        raise WireError(f"unknown kind {d['kind']!r}")
    for k in ("round", "index", "count", "size", "step"):
        if not _is_int(d[k]) or d[k] < 0:
            raise WireError(f"bad {k} {d[k]!r}")
    if not isinstance(d["sha256"], str) or not _HEX64.match(d["sha256"]) or d["msg"] != d["sha256"][:16]:
        raise WireError("bad sha256 / message id")
    if not isinstance(d["dtype"], str) or d["dtype"] not in WIRE_DTYPES:
        raise WireError(f"wire dtype {d['dtype']!r} not in {sorted(WIRE_DTYPES)}")
    mods = d["modalities"]
    if not isinstance(mods, list) or len(mods) > 16 or not all(isinstance(m, str) and _ID.match(m) for m in mods):
        raise WireError("bad modalities")
    if "nonce" in d and not (isinstance(d["nonce"], str) and _NONCE.match(d["nonce"])):
        raise WireError("bad nonce")
    tensors: dict[str, tuple[int, ...]] = {}
    if d["index"] == 0:
        t = d.get("tensors")
        if not isinstance(t, dict) or not t:
            raise WireError("frame 0 lacks the tensor list")
        for name, shape in t.items():
            if not _NAME.match(name) or not isinstance(shape, list) or len(shape) > 8 \
                    or not all(_is_int(s) and 0 <= s < 2**31 for s in shape):
                raise WireError(f"bad tensor entry {name!r}")
            tensors[name] = tuple(shape)
    elif "tensors" in d:
        raise WireError("tensor list outside frame 0")
    return Header(federation=d["federation"], round=d["round"], sender=d["sender"], kind=d["kind"], msg=d["msg"],
                  index=d["index"], count=d["count"], size=d["size"], step=d["step"], sha256=d["sha256"],
                  dtype=d["dtype"], modalities=tuple(mods), tensors=tensors, nonce=d.get("nonce", ""))


def _check_geometry(h: Header, limits: WireLimits, body_len: int) -> None:
    if h.size > limits.max_message:
        raise WireError(f"message of {h.size} B exceeds the {limits.max_message} B limit")
    if not 0 < h.step <= limits.chunk_size or h.count < 1 or h.count > limits.max_chunks:
        raise WireError(f"bad chunking step={h.step} count={h.count}")
    if h.count != max(1, -(-h.size // h.step)) or h.index >= h.count:
        raise WireError(f"chunk {h.index}/{h.count} inconsistent with size {h.size}")
    expected = min(h.step, h.size - h.index * h.step)
    if body_len != expected:
        raise WireError(f"chunk {h.index} carries {body_len} B, header says {expected} B")
    if h.index == 0:
        data = sum(int(np.prod(s, dtype=np.int64)) for s in h.tensors.values()) * ITEMSIZE[h.dtype]
        if data > h.size:
            raise WireError("tensor list larger than the message")


def parse_frame(payload: bytes, limits: WireLimits = WireLimits()) -> tuple[Header, bytes]:
    """Split one MQTT payload into its validated header and body bytes (no tensor decoding yet)."""
    if len(payload) > limits.chunk_size:
        raise WireError(f"frame of {len(payload)} B exceeds the {limits.chunk_size} B chunk limit")
    if len(payload) < PREFIX.size:
        raise WireError("frame truncated before its header")
    magic, version, hlen = PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise WireError("not a fedmekt frame (bad magic)")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version}")
    if hlen > MAX_HEADER or PREFIX.size + hlen > len(payload):
        raise WireError("frame truncated inside its header")
    header = _header_from_json(bytes(payload[PREFIX.size:PREFIX.size + hlen]))
    body = bytes(payload[PREFIX.size + hlen:])
    _check_geometry(header, limits, len(body))
    return header, body


def _to_wire(tensors: Mapping[str, np.ndarray], dtype: str) -> Tensors:
    if dtype not in WIRE_DTYPES:
        raise WireError(f"wire dtype {dtype!r} not in {sorted(WIRE_DTYPES)}")
    if not tensors:
        raise WireError("nothing to encode")
    out: Tensors = {}
    for name, arr in tensors.items():
        if not _NAME.match(name) or (dtype == "int8" and not _NAME.match(name + SCALE_SUFFIX)):
            raise WireError(f"bad tensor name {name!r}")
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.ascontiguousarray(np.asarray(arr), dtype=np.float32 if dtype == "int8" else dtype)
        if not np.isfinite(a).all():
            raise WireError(f"tensor {name} is not finite in {dtype}")
        if dtype == "int8":
            out[name], out[name + SCALE_SUFFIX] = quantize(a)
        else:
            out[name] = a
    return out


def encode(tensors: Mapping[str, np.ndarray], dtype: str = "float32", *, federation: str, round_: int, sender: str,
           kind: str, modalities: tuple[str, ...] = (), limits: WireLimits = WireLimits(),
           nonce: str = "") -> list[bytes]:
    """Encode named tensors as a list of frames (one MQTT payload each), cast to the wire ``dtype``."""
    wire = _to_wire(tensors, dtype)
    body = st_save(wire)
    return frame_body(body, dtype=dtype, federation=federation, round_=round_, sender=sender, kind=kind,
                      modalities=modalities, tensors={k: tuple(np.shape(tensors[k])) for k in tensors},
                      limits=limits, nonce=nonce)


def frame_body(body: bytes, *, dtype: str, federation: str, round_: int, sender: str, kind: str,
               modalities: tuple[str, ...], tensors: dict[str, tuple[int, ...]],
               limits: WireLimits = WireLimits(), nonce: str = "") -> list[bytes]:
    if len(body) > limits.max_message:
        raise WireError(f"message of {len(body)} B exceeds the {limits.max_message} B limit")
    digest = hashlib.sha256(body).hexdigest()
    step = limits.body_step
    count = max(1, -(-len(body) // step))
    frames = []
    for i in range(count):
        h = Header(federation=federation, round=round_, sender=sender, kind=kind, msg=digest[:16], index=i,
                   count=count, size=len(body), step=step, sha256=digest, dtype=dtype,
                   modalities=tuple(modalities), tensors=tensors if i == 0 else {}, nonce=nonce)
        raw = h.to_json()
        if len(raw) > MAX_HEADER:
            raise WireError("header too large (too many tensors or long names)")
        frames.append(PREFIX.pack(MAGIC, VERSION, len(raw)) + raw + body[i * step:(i + 1) * step])
    parse_frame(frames[0], limits)  # a sender never emits what a receiver rejects (e.g. a bad sender id)
    return frames


def decode_body(header: Header, body: bytes, expected: Spec | None = None) -> Tensors:
    """Validate a reassembled body against its frame-0 header and the expected spec; float32 tensors out."""
    if len(body) != header.size or hashlib.sha256(body).hexdigest() != header.sha256:
        raise WireError("body does not match its sha256")
    st_dtype, np_dtype = _ST_DTYPE[header.dtype], np.dtype(header.dtype)
    layout = _safetensors_layout(body)
    want = {name: (st_dtype, shape) for name, shape in header.tensors.items()}
    if header.dtype == "int8":
        want.update({name + SCALE_SUFFIX: ("F32", (channels(shape),)) for name, shape in header.tensors.items()})
    if set(layout) != set(want):
        raise WireError("safetensors content differs from the header's tensor list")
    for name, (dt, shape) in layout.items():
        if dt != want[name][0]:
            raise WireError(f"tensor {name} is {dt}, header says {header.dtype}")
        if shape != want[name][1]:
            raise WireError(f"tensor {name} shape {shape} differs from header {want[name][1]}")
    if expected is not None:
        check_spec(header.tensors, expected)
    try:
        arrays = st_load(body)
    except Exception as exc:  # safetensors raises its own error types
        raise WireError(f"safetensors decode failed: {exc}") from None
    out: Tensors = {}
    for name in header.tensors:
        arr = arrays[name]
        if arr.dtype != np_dtype:
            raise WireError(f"tensor {name} decoded as {arr.dtype}")
        if header.dtype == "int8":
            scales = arrays[name + SCALE_SUFFIX]
            if not (np.isfinite(scales).all() and (scales >= 0).all()):
                raise WireError(f"tensor {name} has a negative or non-finite scale")
            arr = dequantize(arr, scales)
        if not np.isfinite(arr).all():
            raise WireError(f"tensor {name} contains NaN or Inf")
        out[name] = arr.astype(np.float32, copy=False)
    return out


def check_spec(tensors: Mapping[str, tuple[int, ...]], expected: Spec) -> None:
    """The announced tensors must be exactly the expected names and shapes."""
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise WireError(f"unexpected tensor set (missing {missing[:4]}, extra {extra[:4]})")
    for name, (shape, _dtype) in expected.items():
        if tuple(tensors[name]) != tuple(shape):
            raise WireError(f"tensor {name} shape {tuple(tensors[name])}, expected {tuple(shape)}")


def _safetensors_layout(body: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse and check the safetensors header ourselves: offsets contiguous, covering the body exactly."""
    if len(body) < 8:
        raise WireError("safetensors body truncated")
    (n,) = struct.unpack_from("<Q", body)
    if n > 64 * MAX_HEADER or 8 + n > len(body):
        raise WireError("safetensors header length out of range")
    try:
        meta = json.loads(body[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("safetensors header is not JSON") from None
    if not isinstance(meta, dict):
        raise WireError("safetensors header is not an object")
    entries = []
    for name, e in meta.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise WireError(f"bad safetensors entry {name!r}")
        shape, offs = e["shape"], e["data_offsets"]
        if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)
                and isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise WireError(f"bad safetensors entry {name!r}")
        entries.append((offs[0], offs[1], name, e["dtype"], tuple(shape)))
    entries.sort()
    pos, data_len = 0, len(body) - 8 - n
    for start, stop, name, dt, shape in entries:
        item = _ST_ITEMSIZE.get(dt)
        if item is None:
            raise WireError(f"tensor {name} has dtype {dt}")
        if start != pos or stop - start != int(np.prod(shape, dtype=np.int64)) * item:
            raise WireError(f"tensor {name} offsets inconsistent")
        pos = stop
    if pos != data_len:
        raise WireError("safetensors data does not cover the body exactly")
    return {name: (dt, shape) for _, _, name, dt, shape in entries}


def decode_single(payload: bytes, expected: Spec | None = None, limits: WireLimits = WireLimits()) -> tuple[Header, Tensors]:
    """Decode a one-frame message (tests, small control messages)."""
    header, body = parse_frame(payload, limits)
    if header.count != 1:
        raise WireError("message spans several frames; use a Reassembler")
    return header, decode_body(header, body, expected)


def encoded_size(tensors: Mapping[str, np.ndarray], dtype: str = "float32", *, federation: str = "demo",
                 sender: str = "c000", round_: int = 0, kind: str = "upload", modalities: tuple[str, ...] = (),
                 limits: WireLimits = WireLimits()) -> int:
    """Bytes of all MQTT payloads for these tensors (frames: prefix + JSON header + safetensors).

    Header lengths vary by a few bytes with the ids and round number; MQTT's own
    packet framing (topic, packet id, ~50 B per frame) is not included.
    """
    return sum(len(f) for f in encode(tensors, dtype, federation=federation, round_=round_, sender=sender, kind=kind,
                                      modalities=modalities, limits=limits))
