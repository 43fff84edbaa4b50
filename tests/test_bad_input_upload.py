"""Property-based bad-input tests of the server's upload handling (``ServerEngine.absorb``).

Whatever a client sends after the wire decoder (wrong names, shapes or dtypes, NaN/Inf,
a sender that was not selected, a second upload, modalities it does not hold), the
upload is rejected with a ValueError naming the reason, and the round's accumulator
and the server model are exactly as before. Valid uploads sent around the bad ones
are still folded in correctly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fault_ledger import record
from fedmekt.config import FederationConfig, Hyper
from fedmekt.learn.engine import RoundPlan, ServerEngine

MODS = [("acce",), ("gyro",), ("acce", "gyro")]
CASES = settings(deadline=None, max_examples=1500, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=1)
def _setup() -> tuple[ServerEngine, RoundPlan, dict]:
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    split = make_split(load_dataset("demo"), ("acce", "gyro"), clients=(2, 2, 2), seed=0)
    cfg = FederationConfig(clients=(2, 2, 2), per_round=4, rounds=2, proxy_windows=8, device="cpu",
                           hyper=Hyper(server_teacher="mean"))   # the round's mean is of the uploads themselves
    engine = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plan = engine.plan_round(0, [c.client_id for c in split.clients])
    holds = {c.client_id: tuple(c.modalities) for c in split.clients}
    return engine, plan, holds


def _valid(engine: ServerEngine, plan: RoundPlan, mods: tuple[str, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(np.float32)
            for k, (shape, _) in engine.expected_upload(mods, plan).items()}


def _snapshot(engine: ServerEngine) -> tuple:
    mean = engine._mean
    return (frozenset(engine._absorbed), {k: mean.count(k) for k in mean.keys()},
            {k: v.copy() for k, v in mean.mean().items()})


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[2].keys() == b[2].keys() and \
        all(np.array_equal(a[2][k], b[2][k]) for k in a[2])


MUTATIONS = ["drop key", "extra key", "wrong shape", "float64", "float16", "int32", "nan", "inf", "unknown sender",
             "not selected", "duplicate", "no modalities", "foreign modality", "claims more modalities",
             "scalar instead of array"]


@CASES
@given(st.sampled_from(MUTATIONS), st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 3))
def test_bad_uploads_are_rejected_and_change_nothing(mutation, mods_i, pos, dim):
    engine, plan, holds = _setup()
    engine.begin_round(plan)
    sender = ([c for c in plan.selected if holds[c] == MODS[mods_i]] or list(plan.selected))[0]
    mods = holds[sender]
    upload = _valid(engine, plan, mods, pos)
    first_valid = plan.selected[-1] if plan.selected[-1] != sender else plan.selected[0]
    engine.absorb(first_valid, holds[first_valid], _valid(engine, plan, holds[first_valid], 1))  # state to protect
    key = sorted(upload)[pos % len(upload)]
    if mutation == "drop key":
        del upload[key]
    elif mutation == "extra key":
        upload[key + "x"] = upload[key]
    elif mutation == "wrong shape":
        shape = list(upload[key].shape)
        shape[dim % len(shape)] += 1 + pos % 3
        upload[key] = np.zeros(shape, np.float32)
    elif mutation in ("float64", "float16", "int32"):
        upload[key] = upload[key].astype(mutation)
    elif mutation in ("nan", "inf"):
        upload[key].reshape(-1)[pos % upload[key].size] = np.nan if mutation == "nan" else -np.inf
    elif mutation == "unknown sender":
        sender = f"intruder{pos}"
    elif mutation == "not selected":
        sender = next((c for c in holds if c not in plan.selected), "c999")
    elif mutation == "duplicate":
        sender, mods, upload = first_valid, holds[first_valid], _valid(engine, plan, holds[first_valid], pos)
    elif mutation == "no modalities":
        mods = ()
    elif mutation == "foreign modality":
        mods = ("depth",)
    elif mutation == "claims more modalities":
        mods = ("acce", "gyro") if len(mods) == 1 else mods + ("rgb",)
    elif mutation == "scalar instead of array":
        upload[key] = np.float32(1.0)
    before = _snapshot(engine)
    with pytest.raises(ValueError) as info:
        engine.absorb(sender, mods, upload)
    assert str(info.value) and "\n" not in str(info.value)
    assert _same(before, _snapshot(engine)), f"{mutation} changed the accumulator"
    record("bad input", f"upload to the server engine: {mutation}")


def test_valid_uploads_around_bad_ones_give_the_exact_mean():
    engine, plan, holds = _setup()
    engine.begin_round(plan)
    model_before = {k: v.copy() for k, v in engine.state_dict().items()}
    sent = {}
    for i, cid in enumerate(plan.selected):
        bad = _valid(engine, plan, holds[cid], 100 + i)
        bad[sorted(bad)[0]][0, 0, 0] = np.nan
        with pytest.raises(ValueError):
            engine.absorb(cid, holds[cid], bad)
        sent[cid] = _valid(engine, plan, holds[cid], i)
        engine.absorb(cid, holds[cid], sent[cid])
    means = engine._mean.mean()
    assert means  # something was folded in
    for k, got in means.items():
        rows = [u[k] for u in sent.values() if k in u]
        w = [engine.algorithm.client_weight(engine.cfg, holds[c]) for c, u in sent.items() if k in u]
        np.testing.assert_allclose(got, np.average(np.stack(rows), axis=0, weights=w).astype(np.float32), rtol=1e-6)
    after = engine.state_dict()
    assert all(np.array_equal(model_before[k], after[k]) for k in model_before)  # absorb never touches the model
