"""ServerEngine / ClientEngine on a tiny synthetic federation: every algorithm's round, determinism,
checkpoints, plan validation, split hygiene."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.numpy import load, save

from fedmekt.config import ALGORITHMS, FederationConfig, load_config
from fedmekt.learn.engine import ClientEngine, RoundPlan, ServerEngine, client_view
from fedmekt.wire.dtypes import wire_cast
from fedmekt.errors import UserError
from fedmekt.experiment.in_process import run_inprocess
from tests.core_support import tiny_config, tiny_split


@pytest.fixture(scope="module")
def split():
    return tiny_split()


def _engines(cfg, split):
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    clients = {c.client_id: ClientEngine(cfg, c.client_id, c.modalities, split.channels, split.proxy)
               for c in split.clients}
    return server, clients


def _round(server, clients, split, rnd, dtype="float32"):
    data = {c.client_id: c for c in split.clients}
    plan = server.plan_round(rnd, sorted(clients))
    down = server.downstream(plan)
    server.begin_round(plan)
    uploads = {}
    for cid in plan.selected:
        up = clients[cid].train_round(plan, wire_cast(client_view(down, data[cid].modalities), dtype), data[cid].data)
        uploads[cid] = up
        server.absorb(cid, data[cid].modalities, wire_cast(up, dtype))
    return plan, down, uploads, server.finish_round(plan)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_round_of_every_algorithm(split, algorithm):
    cfg = tiny_config(algorithm)
    server, clients = _engines(cfg, split)
    before = {k: v.copy() for k, v in server.state_dict().items() if k.startswith("autoencoder.")}
    plan, down, uploads, row = _round(server, clients, split, 0)
    mods = {c.client_id: c.modalities for c in split.clients}
    for cid, up in uploads.items():
        expected = server.expected_upload(mods[cid], plan)
        assert {k: (v.shape, str(v.dtype)) for k, v in up.items()} == expected
    if cfg.is_embedding:
        assert down["emb/a/z"].shape == (cfg.proxy_windows, cfg.window, 2)
        assert "emb/b/h" not in down and cfg.layers == "rep"   # the default exchanges the representation only
        assert len(plan.proxy_windows) == cfg.proxy_windows
    else:
        assert all(k.startswith("param/") for k in down) and len(plan.proxy_windows) == 0
    after = server.state_dict()
    assert any(not np.array_equal(before[k], after[k]) for k in before), "global model did not change"
    assert row["absorbed"] == len(plan.selected) == cfg.per_round
    for m in cfg.pair:
        assert 0.0 <= row[f"f1_paper_{m}"] <= 1.0 and 0.0 <= row[f"accuracy_{m}"] <= 1.0
    assert np.isfinite(row["loss_classifier"])


@pytest.mark.parametrize("layers", ["rep", "rep+hidden"])
def test_layers_choose_the_exchanged_embeddings(split, layers):
    cfg = tiny_config("fedmekt-s", layers=layers)
    server, clients = _engines(cfg, split)
    _, down, uploads, _ = _round(server, clients, split, 0)
    sent = ["z"] if layers == "rep" else ["h", "z"]
    assert sorted(down) == [f"emb/{m}/{ly}" for m in ("a", "b") for ly in sent]
    if layers == "rep+hidden":
        assert down["emb/b/h"].shape == (cfg.proxy_windows, cfg.window, 8)
    assert all(k.rsplit("/", 1)[1] in sent for up in uploads.values() for k in up)


def test_same_seed_same_run_bit_for_bit_and_other_seed_differs(split):
    a = run_inprocess(tiny_config("fedmekt-c"), split, progress=False)
    b = run_inprocess(tiny_config("fedmekt-c"), split, progress=False)
    c = run_inprocess(tiny_config("fedmekt-c", seed=1), split, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(a.rows) == strip(b.rows)
    for k in a.model_state:
        np.testing.assert_array_equal(a.model_state[k], b.model_state[k])
    assert any(not np.array_equal(a.model_state[k], c.model_state[k]) for k in a.model_state)


def test_a_client_in_another_process_reproduces_its_upload(split):
    """A fresh ClientEngine (as in a separate process) given the same inputs returns the same bytes."""
    cfg = tiny_config("fedmekt-c", wire_dtype="float16")
    server, clients = _engines(cfg, split)
    plan, down, uploads, _ = _round(server, clients, split, 0, dtype="float16")
    cid = plan.selected[0]
    c = next(c for c in split.clients if c.client_id == cid)
    fresh = ClientEngine(cfg, cid, c.modalities, split.channels, split.proxy)
    again = fresh.train_round(RoundPlan.from_json(plan.to_json()),
                              wire_cast(client_view(down, c.modalities), "float16"), c.data)
    for k in uploads[cid]:
        np.testing.assert_array_equal(uploads[cid][k], again[k])


def test_server_checkpoint_round_trip_continues_identically(split):
    cfg = tiny_config("fedmekt-c")
    server, clients = _engines(cfg, split)
    _round(server, clients, split, 0)
    blob = save(server.state_dict())
    client_blobs = {cid: save(c.state_dict()) for cid, c in clients.items()}
    resumed, resumed_clients = _engines(cfg, split)
    resumed.load_state_dict(load(blob))
    for cid, c in resumed_clients.items():
        c.load_state_dict(load(client_blobs[cid]))
    assert resumed.rounds_completed == 1
    *_, row_a = _round(server, clients, split, 1)
    *_, row_b = _round(resumed, resumed_clients, split, 1)
    assert row_a == row_b
    for k, v in server.state_dict().items():
        np.testing.assert_array_equal(v, resumed.state_dict()[k])


def test_plan_draws_fresh_clients_and_windows_each_round(split):
    server, clients = _engines(tiny_config("fedmekt-c", per_round=3), split)
    plans = [server.plan_round(r, list(clients)) for r in range(6)]
    assert len({p.selected for p in plans}) > 1
    assert len({tuple(p.proxy_windows) for p in plans}) > 1
    assert all(p.selected == tuple(sorted(p.selected)) for p in plans)
    assert server.plan_round(3, reversed(list(clients))).to_json() == plans[3].to_json()
    online = sorted(clients)[:2]
    assert set(server.plan_round(0, online).selected) == set(online)


@pytest.mark.parametrize("bad", [
    {"round": -1}, {"round": True}, {"selected": "c000"}, {"selected": ["c000", "c000"]},
    {"proxy_windows": [1.5]}, {"window": 0}, {"algorithm": 3},
])
def test_round_plan_from_json_rejects_bad_fields(bad):
    good = RoundPlan(2, ("c000", "c001"), np.array([0, 5]), 8, "fedmekt-c").to_json()
    assert RoundPlan.from_json(good).to_json() == good
    with pytest.raises(ValueError):
        RoundPlan.from_json({**good, **bad})


def test_server_rejects_bad_uploads(split):
    cfg = tiny_config("fedmekt-c")
    server, clients = _engines(cfg, split)
    plan = server.plan_round(0, list(clients))
    server.begin_round(plan)
    cid = plan.selected[0]
    mods = next(c.modalities for c in split.clients if c.client_id == cid)
    spec = server.expected_upload(mods, plan)
    good = {k: np.zeros(shape, np.float32) for k, (shape, _) in spec.items()}
    with pytest.raises(ValueError):
        server.absorb("not-selected", mods, good)
    with pytest.raises(ValueError):
        server.absorb(cid, mods, {**good, next(iter(good)): np.full(spec[next(iter(good))][0], np.nan, np.float32)})
    with pytest.raises(ValueError):
        server.absorb(cid, mods, {k: v[:1] for k, v in good.items()})
    server.absorb(cid, mods, good)
    with pytest.raises(ValueError):
        server.absorb(cid, mods, good)


def test_wire_cast_float16_rounds_like_the_wire():
    x = {"k": np.array([1.0001, 3.14159, 65504.0], np.float32)}
    out = wire_cast(x, "float16")
    assert out["k"].dtype == np.float32
    np.testing.assert_array_equal(out["k"], x["k"].astype(np.float16).astype(np.float32))
    assert wire_cast(x, "float32")["k"] is not None and np.array_equal(wire_cast(x, "float32")["k"], x["k"])


def test_int8_is_refused_for_parameter_averaging_with_one_line():
    assert tiny_config("fedmekt-s", wire_dtype="int8").wire_dtype == "int8"
    with pytest.raises(UserError, match="int8 quantises embeddings; mmfedavg averages parameters"):
        tiny_config("mmfedavg", wire_dtype="int8")


def test_no_leakage_between_splits(split):
    """Test, proxy, labelled and client data come from disjoint units; no test row appears anywhere else."""
    units = {name: set(getattr(split, name).units) for name in ("test", "proxy", "labelled")}
    units["clients"] = {u for c in split.clients for u in c.data.units}
    names = sorted(units)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert not units[x] & units[y], f"{x} and {y} share units"
    rows = lambda p: {r.tobytes() for r in p.modalities["a"]}  # noqa: E731
    test_rows = rows(split.test)
    for part in [split.proxy, split.labelled] + [c.data for c in split.clients if "a" in c.modalities]:
        assert not test_rows & rows(part)


def test_config_round_trips_and_rejects_bad_values(tmp_path):
    cfg = tiny_config("mmmoon", wire_dtype="float16")
    assert FederationConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "fed.toml"
    path.write_text('algorithm = "fedmekt-s"\nrounds = 7\npair = ["acce", "gyro"]\n[hyper]\nalpha = 0.2\n')
    loaded = load_config(path)
    assert (loaded.algorithm, loaded.rounds, loaded.hyper.alpha, loaded.hyper.beta) == ("fedmekt-s", 7, 0.2, 0.04)
    for bad in ({"algorithm": "fedsgd"}, {"wire_dtype": "int4"}, {"wire_dtype": "int8"}, {"pair": ["a", "a"]},
                {"bogus": 1},
                {"hyper": {"nope": 1}}):
        with pytest.raises(UserError):
            FederationConfig.from_dict({**cfg.to_dict(), **bad})
    path.write_text("rounds = [")
    with pytest.raises(UserError):
        load_config(path)


def _first_upload(cfg, split):
    server, clients = _engines(cfg, split)
    plan, _, uploads, _ = _round(server, clients, split, 0)
    return uploads[plan.selected[0]]


def test_embedding_noise_changes_uploads_deterministically_and_zero_is_bit_identical(split):
    clean = _first_upload(tiny_config("fedmekt-c"), split)
    zero = _first_upload(tiny_config("fedmekt-c", embedding_noise=0.0), split)
    noisy = _first_upload(tiny_config("fedmekt-c", embedding_noise=0.5), split)
    again = _first_upload(tiny_config("fedmekt-c", embedding_noise=0.5), split)
    other_seed = _first_upload(tiny_config("fedmekt-c", embedding_noise=0.5, seed=1), split)
    assert sorted(noisy) == sorted(clean)
    for k in clean:
        np.testing.assert_array_equal(zero[k], clean[k])
        np.testing.assert_array_equal(noisy[k], again[k])
        assert noisy[k].dtype == np.float32 and noisy[k].shape == clean[k].shape
        diff = noisy[k] - clean[k]   # the client trained identically; only the upload carries noise
        assert 0.4 < float(diff.std()) < 0.6
        assert not np.array_equal(noisy[k], other_seed[k])


def test_embedding_noise_and_kd_are_validated():
    for bad in ({"embedding_noise": -0.1}, {"embedding_noise": float("nan")}, {"hyper": {"kd": "l1"}},
                {"hyper": {"temperature": 0.0}}):
        with pytest.raises(UserError):
            FederationConfig.from_dict({**tiny_config().to_dict(), **bad})


@pytest.mark.parametrize("kd", ["mse", "kl"])
def test_kd_choice_changes_the_run_and_faithful_ignores_it(split, kd):
    """``hyper.kd`` changes what a FedMEKT client learns; ``faithful`` always uses the authors' softmax KL."""
    from fedmekt.config import Hyper

    def cfg(kd_, **kw):
        return tiny_config("fedmekt-c", hyper=Hyper(**{**tiny_config().hyper.__dict__, "kd": kd_}), **kw)

    other = "kl" if kd == "mse" else "mse"
    a, b = _first_upload(cfg(kd), split), _first_upload(cfg(other), split)
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    fa, fb = _first_upload(cfg(kd, faithful=True), split), _first_upload(cfg(other, faithful=True), split)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])


@pytest.mark.parametrize("algorithm", ["fedmekt-c", "fedmekt-s"])
def test_server_proxy_walk_trains_more_on_the_proxy_set_and_sends_the_same(split, algorithm):
    """The walk adds reconstruction-only steps over the whole proxy set; the messages stay exactly the same."""
    def steps(server):   # Adam's step counter of the first encoder's first parameter
        return int(server.state_dict()["optim/encoders.a/0/step"].reshape(-1)[0])

    plain, walk = (_engines(tiny_config(algorithm, server_proxy_walk=w), split) for w in (False, True))
    p_plan, p_down, p_up, _ = _round(*plain, split, 0)
    w_plan, w_down, w_up, _ = _round(*walk, split, 0)
    assert w_plan.to_json() == p_plan.to_json()
    for k in p_down:             # round 0's downstream is computed before any server update
        np.testing.assert_array_equal(w_down[k], p_down[k])
    assert {c: {k: v.shape for k, v in u.items()} for c, u in w_up.items()} == \
           {c: {k: v.shape for k, v in u.items()} for c, u in p_up.items()}
    assert steps(walk[0]) > steps(plain[0]) > 0
    _, w_down1, _, _ = _round(*walk, split, 1)
    _, p_down1, _, _ = _round(*plain, split, 1)
    assert any(not np.array_equal(w_down1[k], p_down1[k]) for k in p_down1)


def test_relational_kd_server_averages_each_clients_structure_not_their_embeddings():
    """With kd = relational and the mean teacher the server folds every upload's [W, W] similarity structure into its
    mean (the plain mean: the robust default's clipping is tests/test_core_robust.py's)."""
    from fedmekt.learn.losses import relation

    split = tiny_split()
    cfg = tiny_config("fedmekt-c", hyper=dict(kd="relational", server_teacher="mean"), robust_aggregation="none")
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plan = server.plan_round(0, sorted(c.client_id for c in split.clients))
    down = server.downstream(plan)
    server.begin_round(plan)
    uploads = {}
    for c in split.clients:
        if c.client_id in plan.selected:
            engine = ClientEngine(cfg, c.client_id, c.modalities, split.channels, split.proxy)
            uploads[c.client_id] = engine.train_round(plan, client_view(down, c.modalities), c.data)
            server.absorb(c.client_id, c.modalities, uploads[c.client_id])
    means = server._mean.mean()
    holders = [u["emb/a/z"] for u in uploads.values() if "emb/a/z" in u]
    expected = np.mean([relation(torch.from_numpy(z)).numpy() for z in holders], axis=0)
    assert means["emb/a/z"].shape == (len(plan.proxy_windows),) * 2
    np.testing.assert_allclose(means["emb/a/z"], expected, atol=1e-6)
    row = server.finish_round(plan)
    assert np.isfinite(row["loss_server"])
