"""Wire codec: round trips, chunking, and rejection of everything malformed."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import (
    PREFIX,
    WireError,
    WireLimits,
    decode_body,
    decode_single,
    encode,
    encoded_size,
    parse_frame,
)
from fedmekt.wire.dtypes import dequantize, quantize, wire_cast

META = dict(federation="fed1", round_=3, sender="c001", kind="upload", modalities=("acce",))


def _tensors(seed: int = 0, n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"acce.z": rng.standard_normal((n, 24, 4), dtype=np.float32),
            "acce.h": rng.standard_normal((n, 24, 32), dtype=np.float32)}


def _spec(t):
    return {k: (v.shape, "float32") for k, v in t.items()}


def _reassemble(frames, limits=WireLimits()):
    r = Reassembler(limits)
    done = [c for c in (r.add(f) for f in frames) if c is not None]
    assert len(done) == 1
    return done[0]


def test_roundtrip_float32_is_bit_exact():
    t = _tensors()
    header, out = decode_single(encode(t, **META)[0], _spec(t))
    assert header.sender == "c001" and header.round == 3 and header.modalities == ("acce",)
    assert set(out) == set(t)
    for k in t:
        assert out[k].dtype == np.float32
        np.testing.assert_array_equal(out[k], t[k])


def test_float16_halves_payload_and_equals_cast_roundtrip():
    t = _tensors(n=400)
    f32 = encoded_size(t, "float32", **{k: v for k, v in META.items()})
    f16 = encoded_size(t, "float16", **META)
    assert 0.49 < f16 / f32 < 0.52
    done = _reassemble(encode(t, "float16", **META))
    out = decode_body(done.header, done.body, _spec(t))
    for k in t:
        np.testing.assert_array_equal(out[k], t[k].astype(np.float16).astype(np.float32))


def test_int8_quarters_payload_and_equals_the_in_process_cast():
    t = _tensors(n=400)
    f32, i8 = encoded_size(t, "float32", **META), encoded_size(t, "int8", **META)
    assert 0.25 < i8 / f32 < 0.26   # codes at a quarter, plus one float32 scale per channel
    done = _reassemble(encode(t, "int8", **META))
    assert done.header.tensors == {k: v.shape for k, v in t.items()}   # the scales are not listed
    out = decode_body(done.header, done.body, _spec(t))
    cast = wire_cast(t, "int8")
    for k in t:
        np.testing.assert_array_equal(out[k], cast[k])
        step = np.abs(t[k]).reshape(-1, t[k].shape[-1]).max(axis=0) / 127
        assert (np.abs(out[k] - t[k]) <= step / 2 + 1e-7).all()   # within half a step of each channel


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-10**6, 10**6).map(lambda i: i / 100), min_size=1, max_size=24), st.integers(1, 4))
def test_int8_quantisation_keeps_zeros_signs_and_each_channels_extreme(values, width):
    x = np.resize(np.asarray(values, np.float32), (max(1, len(values) // width), width))
    codes, scales = quantize(x)
    back = dequantize(codes, scales)
    assert codes.dtype == np.int8 and (np.abs(codes) <= 127).all() and scales.shape == (width,)
    assert (back[x == 0] == 0).all() and (np.sign(back) * np.sign(x) >= 0).all()
    np.testing.assert_allclose(np.abs(back).max(axis=0), np.abs(x).max(axis=0), rtol=1e-6)


@pytest.mark.parametrize("scales, codes, match", [
    (np.array([-1.0, 1.0], np.float32), None, "negative or non-finite scale"),
    (np.array([np.nan, 1.0], np.float32), None, "negative or non-finite scale"),
    (np.array([1.0, 1.0, 1.0], np.float32), None, "shape"),
    (np.array([1.0, 1.0], np.float16), None, "is F16"),
    (None, None, "differs from the header's tensor list"),
    (np.array([1.0, 1.0], np.float32), np.ones((3, 2), np.float32), "is F32"),
])
def test_int8_bodies_with_bad_scales_or_codes_are_rejected(scales, codes, match):
    from safetensors.numpy import save
    from fedmekt.wire.codec import frame_body

    body = {"x": np.ones((3, 2), np.int8) if codes is None else codes}
    if scales is not None:
        body["x:scale"] = scales
    frames = frame_body(save(body), dtype="int8", federation="f", round_=0, sender="c0", kind="upload",
                        modalities=(), tensors={"x": (3, 2)})
    with pytest.raises(WireError, match=match):
        decode_single(frames[0])


def test_chunking_respects_chunk_size_and_reassembles_out_of_order():
    t = _tensors(n=2000)  # ~2.2 MiB
    limits = WireLimits(chunk_size=64 * 1024)
    frames = encode(t, **META, limits=limits)
    assert len(frames) > 10 and all(len(f) <= limits.chunk_size for f in frames)
    assert sum(len(f) for f in frames) == encoded_size(t, **META, limits=limits)
    order = np.random.default_rng(1).permutation(len(frames))
    r = Reassembler(limits)
    results = [r.add(frames[i]) for i in order] + [r.add(frames[0])]  # a QoS 1 re-delivery at the end
    done = [c for c in results if c is not None]
    assert len(done) == 1 and r.duplicates == 1
    out = decode_body(done[0].header, done[0].body, _spec(t))
    np.testing.assert_array_equal(out["acce.h"], t["acce.h"])


def test_resent_message_is_a_duplicate():
    t = _tensors()
    r = Reassembler()
    frames = encode(t, **META)
    assert r.add(frames[0]) is not None
    assert r.add(encode(t, **META)[0]) is None  # same content again: same message id
    assert r.duplicates == 1


def test_framing_overhead_is_small():
    t = _tensors(n=200)
    raw = sum(v.nbytes for v in t.values())
    assert encoded_size(t, **META) / raw < 1.01


@pytest.mark.parametrize("bad", [
    b"", b"FM", b"XXX\x01\x00\x00\x00\x00", b"FMK\x02\x00\x00\x00\x00", b"FMK\x01\xff\xff\x00\x00{}",
    b"FMK\x01\x02\x00\x00\x00{}", b"FMK\x01\x04\x00\x00\x00\xff\xfe{}",
])
def test_garbage_frames_are_rejected(bad):
    with pytest.raises(WireError):
        parse_frame(bad)


def _patch_header(frame: bytes, **changes) -> bytes:
    _, _, hlen = PREFIX.unpack_from(frame)
    h = json.loads(frame[PREFIX.size:PREFIX.size + hlen])
    for k, v in changes.items():
        if v is None:
            h.pop(k)
        else:
            h[k] = v
    raw = json.dumps(h).encode()
    return PREFIX.pack(b"FMK", 1, len(raw)) + raw + frame[PREFIX.size + hlen:]


@pytest.mark.parametrize("changes", [
    {"round": -1}, {"round": "3"}, {"round": True}, {"sender": "../etc"}, {"kind": "exec"}, {"dtype": "float64"},
    {"sha256": "0" * 64}, {"size": 10**12}, {"count": 0}, {"index": 5}, {"v": 2}, {"extra": 1}, {"federation": None},
    {"tensors": {"acce.z": [-1]}}, {"tensors": {"acce.z": [10**9, 10**9]}}, {"step": 0}, {"modalities": "acce"},
])
def test_bad_header_fields_are_rejected(changes):
    frame = encode(_tensors(), **META)[0]
    with pytest.raises(WireError):
        header, body = parse_frame(_patch_header(frame, **changes))
        decode_body(header, body)


def test_truncated_and_flipped_bodies_are_rejected():
    frame = encode(_tensors(), **META)[0]
    with pytest.raises(WireError, match="carries"):
        parse_frame(frame[:-1])
    flipped = bytearray(frame)
    flipped[-5] ^= 0xFF
    header, body = parse_frame(bytes(flipped))
    with pytest.raises(WireError, match="sha256"):
        decode_body(header, body)


def test_expected_spec_mismatch_is_rejected():
    t = _tensors()
    frame = encode(t, **META)[0]
    spec = _spec(t)
    with pytest.raises(WireError, match="shape"):
        decode_single(frame, {**spec, "acce.z": ((50, 24, 5), "float32")})
    with pytest.raises(WireError, match="tensor set"):
        decode_single(frame, {**spec, "depth.z": ((50, 24, 4), "float32")})


def test_nonfinite_values_are_rejected_on_both_sides():
    t = _tensors()
    t["acce.z"][0, 0, 0] = np.nan
    with pytest.raises(WireError, match="finite"):
        encode(t, **META)
    big = {"x": np.full((4,), 1e6, np.float32)}
    with pytest.raises(WireError, match="finite"):
        encode(big, "float16", **META)  # overflows float16


def test_nan_smuggled_past_the_encoder_is_rejected_by_the_decoder():
    from safetensors.numpy import save
    from fedmekt.wire.codec import frame_body

    body = save({"x": np.array([1.0, np.inf], np.float32)})
    frames = frame_body(body, dtype="float32", federation="f", round_=0, sender="c0", kind="upload",
                        modalities=(), tensors={"x": (2,)})
    with pytest.raises(WireError, match="NaN or Inf"):
        decode_single(frames[0])


def test_safetensors_header_disagreeing_with_frame_header_is_rejected():
    from safetensors.numpy import save
    from fedmekt.wire.codec import frame_body

    body = save({"x": np.zeros((2, 3), np.float32)})
    frames = frame_body(body, dtype="float32", federation="f", round_=0, sender="c0", kind="upload",
                        modalities=(), tensors={"x": (3, 2)})
    with pytest.raises(WireError, match="shape"):
        decode_single(frames[0])
    frames = frame_body(body, dtype="float16", federation="f", round_=0, sender="c0", kind="upload",
                        modalities=(), tensors={"x": (2, 3)})
    with pytest.raises(WireError):
        decode_single(frames[0])


def test_size_limits_per_message_and_per_round():
    t = _tensors(n=300)  # ~330 KiB
    limits = WireLimits(chunk_size=64 * 1024, max_message=200 * 1024, max_round=300 * 1024)
    with pytest.raises(WireError, match="limit"):
        encode(t, **META, limits=limits)
    big_frames = encode(t, **META, limits=WireLimits(chunk_size=64 * 1024))
    with pytest.raises(WireError, match="limit"):
        Reassembler(limits).add(big_frames[0])
    r = Reassembler(limits)
    for f in encode(_tensors(n=50), **META, limits=limits):  # ~170 KiB: fits both limits
        r.add(f)
    second = encode(_tensors(seed=1, n=50), **META, limits=limits)
    with pytest.raises(WireError, match="per-round"):
        r.add(second[0])


def test_pending_messages_are_bounded():
    limits = WireLimits(chunk_size=64 * 1024)
    r = Reassembler(limits, max_pending=3)
    for s in range(10):
        frames = encode(_tensors(seed=s, n=100), **{**META, "sender": f"c{s:03d}"}, limits=limits)
        r.add(frames[0])
    assert len(r._pending) == 3
    assert r.pending_bytes <= 3 * limits.chunk_size


def test_frames_of_one_message_must_agree():
    limits = WireLimits(chunk_size=64 * 1024)
    frames = encode(_tensors(n=200), **META, limits=limits)
    r = Reassembler(limits)
    r.add(frames[0])
    with pytest.raises(WireError, match="disagree"):
        r.add(_patch_header(frames[1], dtype="float16"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_decoder(data):
    for payload in (data, b"FMK\x01" + struct.pack("<I", len(data)) + data):
        try:
            header, body = parse_frame(payload)
            decode_body(header, body)
        except WireError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2000), st.integers(0, 200))
def test_mutated_frames_raise_only_wire_error(pos, value):
    frame = bytearray(encode(_tensors(n=5), **META)[0])
    frame[pos % len(frame)] = value
    try:
        header, body = parse_frame(bytes(frame))
        decode_body(header, body, _spec(_tensors(n=5)))
    except WireError:
        pass
