"""Property-based bad-input tests of the aggregator's upload handling (``Aggregator._dispatch``).

Every MQTT message the aggregator receives goes through ``_dispatch(Message)``. With a
round open (one valid upload already folded in), generated hostile messages — stale or
future rounds, unknown or spoofed senders (header sender != topic id == MQTT username),
wrong federation or kind, modalities other than announced, wrong tensor specs, NaN/Inf,
duplicates, missing or corrupted chunks, garbage — must never raise, must never reach
the engine (its streaming mean stays bit-identical) and each rejected upload must be
discarded with a logged reason. Valid uploads sent among them still land exactly.
"""

from __future__ import annotations

import itertools
import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from fault_ledger import record
from fedmekt.config import FederationConfig
from fedmekt.mqtt import Message
from fedmekt.wire.codec import PREFIX, WireLimits, encode, frame_body

LIMITS = WireLimits(chunk_size=16 * 1024)  # several frames per upload: room for missing / duplicate chunks
FED = "demo"
CASES = settings(deadline=None, max_examples=2500, suppress_health_check=[HealthCheck.too_slow])


def _split_and_cfg():
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    split = make_split(load_dataset("demo"), ("acce", "gyro"), clients=(2, 2, 2), seed=0)
    cfg = FederationConfig(federation=FED, clients=(2, 2, 2), per_round=5, rounds=3, proxy_windows=8, device="cpu")
    return split, cfg


def open_round(tmp: Path, round_: int = 1):
    """An Aggregator with round ``round_`` open, as ``_one_round`` leaves it while waiting for uploads."""
    from aggregator.service import Aggregator, AggregatorOptions, _Round
    from fedmekt.engine import ServerEngine
    from fedmekt.wire.chunks import Reassembler

    split, cfg = _split_and_cfg()
    agg = Aggregator(cfg, split, "mqtt://127.0.0.1:1", AggregatorOptions(out=tmp, limits=LIMITS, progress=False))
    agg.server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    agg.online = {c.client_id: tuple(c.modalities) for c in split.clients}
    plan = agg.server.plan_round(round_, sorted(agg.online))
    agg.server.begin_round(plan)
    agg._absorbed = set()
    agg._round = _Round(plan, time.time() + 3600, len(plan.selected), Reassembler(LIMITS, agg.opts.max_pending))
    return agg, plan


def upload_frames(agg, plan, cid: str, seed: int, **over) -> list[bytes]:
    mods = agg.online.get(cid) or ("acce",)
    rng = np.random.default_rng(seed)
    tensors = {k: rng.standard_normal(shape).astype(np.float32)
               for k, (shape, _) in agg.server.expected_upload(mods, plan).items()}
    meta = dict(federation=FED, round_=plan.round, sender=cid, kind="upload", modalities=mods)
    meta.update(over)
    return encode(tensors, "float32", **meta, limits=LIMITS)


def topic(cid: str, round_: int | str, chunk: int) -> str:
    return f"fedmekt/{FED}/clients/{cid}/upload/{round_}/{chunk}"


def snapshot(agg) -> tuple:
    mean = agg.server._mean
    return (frozenset(agg._absorbed), {k: mean.count(k) for k in mean.keys()},
            {k: v.copy() for k, v in mean.mean().items()})


def same(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[2].keys() == b[2].keys() and \
        all(np.array_equal(a[2][k], b[2][k]) for k in a[2])


@lru_cache(maxsize=1)
def _shared(tmp: str):
    """One open round reused by every example: the first selected client has already uploaded."""
    agg, plan = open_round(Path(tmp))
    first = plan.selected[0]
    for i, f in enumerate(upload_frames(agg, plan, first, 0)):
        agg._dispatch(Message(topic(first, plan.round, i), f, False))
    assert agg._absorbed == {first}
    return agg, plan


MUTATIONS = ["stale round", "future round", "unknown sender", "unselected sender", "spoofed sender",
             "topic round differs", "other federation", "kind global", "other modalities", "wrong spec",
             "nan", "inf", "duplicate of an absorbed upload", "missing chunk", "flipped byte", "truncated",
             "garbage", "invalid JSON header", "oversized frame"]


_FRESH = itertools.count(1 << 20)


def _bad(agg, plan, mutation: str, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    selected = [c for c in plan.selected if c not in agg._absorbed]
    cid = selected[int(rng.integers(len(selected)))]
    # fresh content every call: an incomplete message left by an earlier example is never completed by this one
    seed = next(_FRESH)
    frames = upload_frames(agg, plan, cid, seed)
    msgs = [(topic(cid, plan.round, i), f) for i, f in enumerate(frames)]
    pick = int(rng.integers(len(frames)))
    if mutation == "stale round":
        r = plan.round - 1
        msgs = [(topic(cid, r, i), f) for i, f in enumerate(upload_frames(agg, plan, cid, seed, round_=r))]
    elif mutation == "future round":
        r = plan.round + 1 + int(rng.integers(5))
        msgs = [(topic(cid, r, i), f) for i, f in enumerate(upload_frames(agg, plan, cid, seed, round_=r))]
    elif mutation in ("unknown sender", "unselected sender"):
        other = f"x{seed % 1000:03d}" if mutation == "unknown sender" else \
            next(c for c in sorted(agg.online) if c not in plan.selected)
        msgs = [(topic(other, plan.round, i), f) for i, f in enumerate(upload_frames(agg, plan, other, seed))]
    elif mutation == "spoofed sender":  # device `cid` (topic = its username) claims to be another client
        victim = next(c for c in plan.selected if c != cid)
        msgs = [(topic(cid, plan.round, i), f) for i, f in enumerate(upload_frames(agg, plan, cid, seed,
                                                                                   sender=victim))]
    elif mutation == "topic round differs":
        msgs = [(topic(cid, plan.round + 1, i), f) for i, f in enumerate(frames)]
    elif mutation == "other federation":
        msgs = [(t, f) for t, f in zip([m[0] for m in msgs], upload_frames(agg, plan, cid, seed, federation="evil"))]
    elif mutation == "kind global":
        msgs = [(t, f) for t, f in zip([m[0] for m in msgs], upload_frames(agg, plan, cid, seed, kind="global"))]
    elif mutation == "other modalities":
        mods = agg.online[cid]
        claim = ("gyro",) if mods == ("acce",) else ("acce",)
        msgs = [(t, f) for t, f in zip([m[0] for m in msgs], upload_frames(agg, plan, cid, seed, modalities=claim))]
    elif mutation in ("wrong spec", "nan", "inf"):
        mods = agg.online[cid]
        spec = agg.server.expected_upload(mods, plan)
        tensors = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in spec.items()}
        name = sorted(tensors)[int(rng.integers(len(tensors)))]
        if mutation == "wrong spec":
            shape = list(tensors[name].shape)
            shape[int(rng.integers(len(shape)))] += 1
            tensors[name] = np.zeros(shape, np.float32)
        else:
            tensors[name].reshape(-1)[int(rng.integers(tensors[name].size))] = np.nan if mutation == "nan" else np.inf
        body = st_save(tensors)
        fr = frame_body(body, dtype="float32", federation=FED, round_=plan.round, sender=cid, kind="upload",
                        modalities=mods, tensors={k: tuple(v.shape) for k, v in tensors.items()}, limits=LIMITS)
        msgs = [(topic(cid, plan.round, i), f) for i, f in enumerate(fr)]
    elif mutation == "duplicate of an absorbed upload":
        first = sorted(agg._absorbed)[0]
        msgs = [(topic(first, plan.round, i), f) for i, f in enumerate(upload_frames(agg, plan, first, seed))]
    elif mutation == "missing chunk":
        del msgs[pick]
    elif mutation == "flipped byte":
        t, f = msgs[pick]
        f = bytearray(f)
        f[int(rng.integers(PREFIX.size, len(f)))] ^= 1 + int(rng.integers(255))
        msgs[pick] = (t, bytes(f))
    elif mutation == "truncated":
        t, f = msgs[pick]
        msgs[pick] = (t, f[: int(rng.integers(len(f)))])
    elif mutation == "garbage":
        msgs = [(topic(cid, plan.round, 0), rng.bytes(int(rng.integers(0, 4096))))]
    elif mutation == "invalid JSON header":
        t, f = msgs[0]
        _, _, hlen = PREFIX.unpack_from(f)
        header = json.loads(f[PREFIX.size:PREFIX.size + hlen])
        key = sorted(header)[int(rng.integers(len(header)))]
        header[key] = [None, "x", -1, 2**70, {"a": 1}, 1.5][int(rng.integers(6))]
        raw = json.dumps(header).encode()
        msgs[0] = (t, PREFIX.pack(b"FMK", 1, len(raw)) + raw + f[PREFIX.size + hlen:])
    elif mutation == "oversized frame":
        t, f = msgs[pick]
        msgs[pick] = (t, f + rng.bytes(LIMITS.chunk_size))
    return msgs


@CASES
@given(st.sampled_from(MUTATIONS), st.integers(0, 2**32 - 1))
def test_hostile_uploads_never_reach_the_engine(tmp_path_factory, mutation, seed):
    agg, plan = _shared(str(tmp_path_factory.getbasetemp() / "aggregator-props"))
    before, discarded = snapshot(agg), len(agg.discarded)
    for t, payload in _bad(agg, plan, mutation, np.random.default_rng(seed)):
        agg._dispatch(Message(t, payload, False))  # must not raise
    assert same(before, snapshot(agg)), f"{mutation} changed the round's accumulator"
    if mutation != "missing chunk":  # an incomplete message just waits (bounded) until the round closes
        assert len(agg.discarded) > discarded, f"{mutation} was not discarded with a reason"
        assert all(agg.discarded[discarded:]) and all("\n" not in d for d in agg.discarded[discarded:])
    record("bad input", f"aggregator upload: {mutation}")


def test_valid_uploads_among_hostile_ones_are_absorbed_exactly(tmp_path):
    agg, plan = open_round(tmp_path)
    rng = np.random.default_rng(7)
    for cid in plan.selected:
        for mutation in ("spoofed sender", "nan", "truncated", "stale round"):
            for t, payload in _bad(agg, plan, mutation, rng):
                agg._dispatch(Message(t, payload, False))
        frames = upload_frames(agg, plan, cid, 1000 + plan.selected.index(cid))
        for i in np.random.default_rng(1).permutation(len(frames)):  # out of order, one repeated
            agg._dispatch(Message(topic(cid, plan.round, int(i)), frames[int(i)], False))
        agg._dispatch(Message(topic(cid, plan.round, 0), frames[0], False))
    assert agg._absorbed == set(plan.selected)
    means = agg.server._mean.mean()
    for k, got in means.items():
        rows, weights = [], []
        for cid in plan.selected:
            mods = agg.online[cid]
            spec = agg.server.expected_upload(mods, plan)
            if k in spec:
                r = np.random.default_rng(1000 + plan.selected.index(cid))
                sent = {n: r.standard_normal(s).astype(np.float32) for n, (s, _) in spec.items()}
                rows.append(sent[k])
                weights.append(agg.server.algorithm.client_weight(agg.cfg, mods))
        np.testing.assert_allclose(got, np.average(np.stack(rows), axis=0, weights=weights), rtol=1e-6, atol=1e-7)
