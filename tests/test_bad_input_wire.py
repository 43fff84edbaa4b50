"""Property-based bad-input tests of the wire decoder and the chunk reassembler.

Every generated payload either raises :class:`WireError` (with a one-line reason)
or, when the mutation happened to leave a valid message, decodes to exactly the
tensors that were sent and that match the expected spec. Anything else (another
exception type, a hang, tensors that differ from the spec) fails the test. The
cases are tallied in the fault ledger printed at the end of the run.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from fault_ledger import record
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import MAGIC, PREFIX, VERSION, WireError, WireLimits, decode_body, encode, frame_body, parse_frame

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def cases(n: int) -> settings:
    return settings(FAST, max_examples=n)

META = dict(federation="demo", round_=4, sender="c003", kind="upload", modalities=("acce",))
RNG = np.random.default_rng(0)
SMALL = {"acce.z": RNG.standard_normal((3, 6, 2)).astype(np.float32),
         "acce.h": RNG.standard_normal((3, 6, 4)).astype(np.float32)}
SPEC = {k: (v.shape, "float32") for k, v in SMALL.items()}
LIMITS = WireLimits(chunk_size=16 * 1024)  # the smallest allowed chunk: many frames per message
BIG = {"acce.z": RNG.standard_normal((40, 24, 2)).astype(np.float32),
       "acce.h": RNG.standard_normal((40, 24, 32)).astype(np.float32)}  # ~130 KiB -> 9 frames
BIG_SPEC = {k: (v.shape, "float32") for k, v in BIG.items()}
SMALL_FRAME = encode(SMALL, **META)[0]
BIG_FRAMES = encode(BIG, **META, limits=LIMITS)


def _check(payloads: list[bytes], expected, original, what: str, limits: WireLimits = WireLimits()) -> None:
    """Feed frames to a fresh reassembler and decode; WireError or an exact, spec-conforming result only."""
    r = Reassembler(limits)
    try:
        done = [c for c in (r.add(p) for p in payloads) if c is not None]
        for c in done:
            out = decode_body(c.header, c.body, expected)
            assert set(out) == set(original)
            for k, v in out.items():
                assert v.dtype == np.float32 and v.shape == original[k].shape
                np.testing.assert_array_equal(v, original[k])
    except WireError as exc:
        assert exc.reason and "\n" not in exc.reason
        record("bad input", what)
        return
    record("bad input", what, handled=0, accepted=1)


def _header(frame: bytes) -> dict:
    _, _, hlen = PREFIX.unpack_from(frame)
    return json.loads(frame[PREFIX.size:PREFIX.size + hlen])


def _reframe(frame: bytes, header: object, raw: bytes | None = None) -> bytes:
    _, _, hlen = PREFIX.unpack_from(frame)
    raw = json.dumps(header).encode() if raw is None else raw
    return PREFIX.pack(MAGIC, VERSION, len(raw)) + raw + frame[PREFIX.size + hlen:]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
HEADER_KEYS = sorted(_header(SMALL_FRAME)) + ["extra", ""]


@cases(1500)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data):
    for payload in (data, MAGIC + bytes([VERSION]) + struct.pack("<I", len(data)) + data):
        _check([payload], SPEC, SMALL, "arbitrary bytes / bytes after a valid prefix")


@cases(2000)
@given(st.dictionaries(st.sampled_from(HEADER_KEYS), json_values | st.just(None), min_size=1, max_size=4))
def test_invalid_json_header_fields(changes):
    header = _header(SMALL_FRAME)
    for k, v in changes.items():
        if v is None:
            header.pop(k, None)
        else:
            header[k] = v
    _check([_reframe(SMALL_FRAME, header)], SPEC, SMALL, "header fields of wrong type / range / missing / extra")


@cases(800)
@given(json_values, st.binary(max_size=64))
def test_header_not_a_json_object(value, junk):
    raw = json.dumps(value).encode() if not isinstance(value, dict) else json.dumps(value).encode() + junk
    _check([_reframe(SMALL_FRAME, None, raw)], SPEC, SMALL, "header not a JSON object / trailing junk")


@cases(1200)
@given(st.integers(0, 10**6), st.booleans())
def test_truncated_frames(cut, big):
    frames = list(BIG_FRAMES) if big else [SMALL_FRAME]
    i = cut % len(frames)
    frames[i] = frames[i][: cut % len(frames[i])]
    _check(frames, BIG_SPEC if big else SPEC, BIG if big else SMALL, "truncated frame",
           LIMITS if big else WireLimits())


@cases(700)
@given(st.integers(1, 40_000), st.sampled_from(["pad", "size", "count"]))
def test_oversized(extra, how):
    if how == "pad":  # a frame larger than the chunk limit, or a body longer than its header says
        frames = [BIG_FRAMES[0] + b"\0" * extra] + BIG_FRAMES[1:]
    else:  # a header that claims a message beyond the per-message limit
        h = _header(BIG_FRAMES[0])
        h["size" if how == "size" else "count"] = LIMITS.max_message * (1 + extra) if how == "size" else 10**6 + extra
        frames = [_reframe(BIG_FRAMES[0], h)]
    _check(frames, BIG_SPEC, BIG, "oversized frame or message", LIMITS)


ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64,
             "U8": np.uint8, "BOOL": np.bool_}


@cases(1500)
@given(st.sampled_from(sorted(ST_DTYPES)), st.sampled_from(["float32", "float16"]),
       st.lists(st.integers(0, 7), min_size=0, max_size=4), st.sampled_from(sorted(SPEC)),
       st.booleans())
def test_wrong_dtype_or_shape(st_dtype, wire_dtype, shape, name, honest_header):
    """A sender-crafted safetensors body (any dtype/shape) behind a consistent frame header."""
    tensors = dict(SMALL)
    tensors[name] = np.ones(shape, dtype=ST_DTYPES[st_dtype])
    tensors = {k: (v.astype(np.float16) if wire_dtype == "float16" and k != name else v) for k, v in tensors.items()}
    body = st_save(tensors)
    announced = {k: tuple(v.shape) for k, v in tensors.items()} if honest_header else \
        {k: tuple(v.shape) for k, v in SMALL.items()}
    valid = st_dtype == {"float32": "F32", "float16": "F16"}[wire_dtype] and tuple(shape) == SPEC[name][0]
    try:
        frames = frame_body(body, dtype=wire_dtype, federation="demo", round_=4, sender="c003", kind="upload",
                            modalities=("acce",), tensors=announced)
        out = parse_and_decode(frames[0])
    except WireError:
        assert not valid
        record("bad input", "wrong dtype or shape")
        return
    assert valid
    for k, v in out.items():
        np.testing.assert_array_equal(v, tensors[k].astype(np.float32))
    record("bad input", "wrong dtype or shape", handled=0, accepted=1)


def parse_and_decode(frame: bytes):
    header, body = parse_frame(frame)
    return decode_body(header, body, SPEC)


@cases(1000)
@given(st.sampled_from(["float32", "float16"]), st.sampled_from(sorted(SPEC)),
       st.lists(st.integers(0, 10**6), min_size=1, max_size=4), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_and_inf_are_rejected(wire_dtype, name, positions, value):
    np_dtype = np.float16 if wire_dtype == "float16" else np.float32
    tensors = {k: v.astype(np_dtype) for k, v in SMALL.items()}
    flat = tensors[name].reshape(-1)
    flat[[p % flat.size for p in positions]] = value
    body = st_save(tensors)
    frames = frame_body(body, dtype=wire_dtype, federation="demo", round_=4, sender="c003", kind="upload",
                        modalities=("acce",), tensors={k: tuple(v.shape) for k, v in tensors.items()})
    with pytest.raises(WireError, match="NaN or Inf"):
        parse_and_decode(frames[0])
    record("bad input", "NaN / Inf in an upload")


@cases(1500)
@given(st.lists(st.integers(0, len(BIG_FRAMES) - 1), min_size=0, max_size=3 * len(BIG_FRAMES)))
def test_duplicate_missing_and_reordered_chunks(order):
    """Frames in any order, repeated or missing: complete exactly once iff every chunk came, never corrupted."""
    r = Reassembler(LIMITS)
    done = [c for c in (r.add(BIG_FRAMES[i]) for i in order) if c is not None]
    complete = set(order) == set(range(len(BIG_FRAMES)))
    assert len(done) == int(complete)
    assert r.duplicates == len(order) - len(set(order))
    if complete:
        out = decode_body(done[0].header, done[0].body, BIG_SPEC)
        np.testing.assert_array_equal(out["acce.h"], BIG["acce.h"])
    else:
        r.forget_round(META["round_"])
        assert r.pending_bytes == 0  # a closed round's incomplete message is dropped, nothing leaks
    record("bad input", "duplicate / missing / reordered chunks")


@cases(1500)
@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), min_size=1, max_size=4), st.booleans())
def test_byte_flips(flips, big):
    frames = [bytearray(f) for f in (BIG_FRAMES if big else [SMALL_FRAME])]
    for pos, value in flips:
        f = frames[pos % len(frames)]
        f[pos % len(f)] = value
    _check([bytes(f) for f in frames], BIG_SPEC if big else SPEC, BIG if big else SMALL, "flipped bytes",
           LIMITS if big else WireLimits())
