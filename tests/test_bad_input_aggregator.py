"""Property-based bad-input tests of the aggregator's upload handling (``Aggregator._dispatch``).

Every MQTT message the aggregator receives goes through ``_dispatch(Message)``. With a
round open (one valid upload already folded in), generated hostile messages — stale or
future rounds, unknown or spoofed senders (header sender != topic id == MQTT username),
wrong federation or kind, modalities other than announced, wrong tensor specs, NaN/Inf,
duplicates, missing or corrupted chunks, garbage — must never raise, must never reach
the engine (its streaming mean stays bit-identical) and each rejected upload must be
discarded with a logged reason; an upload that is merely incomplete is held, not
discarded. Valid uploads sent among them still land exactly.

Each generated example gets a freshly opened round (new reassembler, accumulator and
discard log), and its upload content is drawn from the example's own seed: examples
cannot complete or pre-empt each other's messages, and a falsifying example replays
exactly. Accumulation over many hostile messages in one round is the job of the
second test.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from fault_ledger import record
from fedmekt.config import FederationConfig, Hyper
from fedmekt.transport.mqtt import Message
from fedmekt.wire.codec import PREFIX, WireError, WireLimits, encode, frame_body, parse_frame

LIMITS = WireLimits(chunk_size=16 * 1024)  # several frames per upload: room for missing / duplicate chunks
FED = "demo"
CASES = settings(deadline=None, max_examples=2500, suppress_health_check=[HealthCheck.too_slow])


def _split_and_cfg():
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    split = make_split(load_dataset("demo"), ("acce", "gyro"), clients=(2, 2, 2), seed=0)
    # rep+hidden: uploads of several 16 KiB frames (a rep-only one fits one), room for missing / duplicate chunks;
    # the mean teacher: the round's accumulator holds the uploads themselves, so the exact mean can be checked
    cfg = FederationConfig(federation=FED, clients=(2, 2, 2), per_round=5, rounds=3, proxy_windows=8, device="cpu",
                           layers="rep+hidden", hyper=Hyper(server_teacher="mean"))
    return split, cfg


def new_aggregator(tmp: Path, round_: int = 1):
    """An Aggregator with its engine, every client online and the plan of round ``round_`` (not opened yet)."""
    from aggregator.service import Aggregator, AggregatorOptions
    from fedmekt.learn.engine import ServerEngine

    split, cfg = _split_and_cfg()
    agg = Aggregator(cfg, split, "mqtt://127.0.0.1:1", AggregatorOptions(out=tmp, limits=LIMITS, progress=False))
    agg.server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    agg.online = {c.client_id: tuple(c.modalities) for c in split.clients}
    return agg, agg.server.plan_round(round_, sorted(agg.online))


def reopen(agg, plan) -> None:
    """Open ``plan``'s round afresh, as ``_one_round`` leaves it while waiting for uploads (cheap: no model work)."""
    from aggregator.open_round import OpenRound
    from fedmekt.wire.chunks import Reassembler

    agg.server.begin_round(plan)
    agg._absorbed = set()
    agg.discarded.clear()
    agg._round = OpenRound(plan, time.time() + 3600, len(plan.selected), Reassembler(LIMITS, agg.opts.max_pending))


def open_round(tmp: Path, round_: int = 1):
    """A new Aggregator with round ``round_`` open and nothing uploaded yet."""
    agg, plan = new_aggregator(tmp, round_)
    reopen(agg, plan)
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


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Aggregator, plan and the first selected client's valid upload, built once (the engine is the costly part)."""
    agg, plan = new_aggregator(tmp_path_factory.mktemp("aggregator-props"))
    first = plan.selected[0]
    return agg, plan, [(topic(first, plan.round, i), f) for i, f in enumerate(upload_frames(agg, plan, first, 0))]


def deliver(agg, msgs: list[tuple[str, bytes]]) -> None:
    for t, payload in msgs:
        agg._dispatch(Message(t, payload, False))  # must not raise


def check_handled(agg, mutation: str, waits: bool, discarded: int, pending: int) -> None:
    """A rejected upload leaves one-line reasons; an incomplete one is held (bounded) until the round closes."""
    new = agg.discarded[discarded:]
    if waits:
        assert not new, f"{mutation}: an upload still missing a chunk was discarded: {new}"
        assert agg._round.reassembler.pending_bytes > pending, f"{mutation}: incomplete upload not held"
    else:
        assert new, f"{mutation} was not discarded with a reason"
        assert all(new) and all("\n" not in d for d in new)


def _relabels_chunk(frame: bytes, flipped: bytes) -> bool:
    """The flip turned chunk i into a well-formed chunk j of the same message (a digit of its index).

    That is indistinguishable from a repeated chunk j plus a lost chunk i, so the
    message rightly waits like "missing chunk".
    """
    try:
        a, b = parse_frame(frame, LIMITS)[0], parse_frame(flipped, LIMITS)[0]
    except WireError:
        return False
    return a.index != b.index and dataclasses.replace(a, index=b.index) == b


MUTATIONS = ["stale round", "future round", "unknown sender", "unselected sender", "spoofed sender",
             "topic round differs", "other federation", "kind global", "other modalities", "wrong spec",
             "nan", "inf", "duplicate of an absorbed upload", "missing chunk", "flipped byte", "truncated",
             "garbage", "invalid JSON header", "oversized frame"]


def _bad(agg, plan, mutation: str, rng: np.random.Generator) -> tuple[list[tuple[str, bytes]], bool]:
    """The hostile messages for ``mutation`` and whether the upload is merely incomplete (waits, no discard)."""
    selected = [c for c in plan.selected if c not in agg._absorbed]
    cid = selected[int(rng.integers(len(selected)))]
    seed = int(rng.integers(1 << 30))  # upload content: reproducible from the example's own seed
    frames = upload_frames(agg, plan, cid, seed)
    msgs = [(topic(cid, plan.round, i), f) for i, f in enumerate(frames)]
    pick = int(rng.integers(len(frames)))
    waits = mutation == "missing chunk"
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
        g = bytearray(f)
        g[int(rng.integers(PREFIX.size, len(f)))] ^= 1 + int(rng.integers(255))
        msgs[pick] = (t, bytes(g))
        waits = _relabels_chunk(f, bytes(g))
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
    return msgs, waits


@CASES
@given(st.sampled_from(MUTATIONS), st.integers(0, 2**32 - 1))
def test_hostile_uploads_never_reach_the_engine(federation, mutation, seed):
    agg, plan, first_upload = federation
    reopen(agg, plan)  # nothing left over from earlier examples
    deliver(agg, first_upload)
    assert agg._absorbed == {plan.selected[0]}
    before, discarded, pending = snapshot(agg), len(agg.discarded), agg._round.reassembler.pending_bytes
    msgs, waits = _bad(agg, plan, mutation, np.random.default_rng(seed))
    deliver(agg, msgs)
    assert same(before, snapshot(agg)), f"{mutation} changed the round's accumulator"
    check_handled(agg, mutation, waits, discarded, pending)
    record("bad input", f"aggregator upload: {mutation}")


@pytest.mark.parametrize("mutation", ["spoofed sender", "other federation", "kind global"])
def test_header_topic_mismatch_counts_as_rejected(federation, mutation):
    """A header that contradicts its topic (another sender, another federation) is a rejected upload in the metrics."""
    agg, plan, _ = federation
    reopen(agg, plan)
    msgs, _ = _bad(agg, plan, mutation, np.random.default_rng(3))
    deliver(agg, msgs)
    assert agg._round.rejected >= 1
    assert any("header does not match its topic" in d for d in agg.discarded)


def test_valid_uploads_among_hostile_ones_are_absorbed_exactly(tmp_path):
    """One round takes every kind of hostile message before each client's upload (state accumulates)."""
    agg, plan = open_round(tmp_path)
    rng = np.random.default_rng(7)
    for cid in plan.selected:
        for mutation in MUTATIONS:
            if mutation == "duplicate of an absorbed upload" and not agg._absorbed:
                continue
            before, discarded, pending = snapshot(agg), len(agg.discarded), agg._round.reassembler.pending_bytes
            msgs, waits = _bad(agg, plan, mutation, rng)
            deliver(agg, msgs)
            assert same(before, snapshot(agg)), f"{mutation} changed the round's accumulator"
            check_handled(agg, mutation, waits, discarded, pending)
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
