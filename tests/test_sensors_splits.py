"""Splits: disjoint by unit/subject, seeded, normalised without leakage, modality assignment, manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sensors.datasets import load_dataset
from sensors.recording import Recording
from sensors.splits import SplitError, make_split, write_manifest

PAIR = ("acce", "gyro")


@pytest.fixture(scope="module")
def demo() -> list[Recording]:
    return load_dataset("demo")


def _subjects(recs, units):
    by_unit = {r.unit: r.subject for r in recs}
    return {by_unit[u] for u in units}


@pytest.mark.parametrize("scheme", ["paper", "subject"])
def test_splits_are_disjoint_by_subject(demo, scheme):
    split = make_split(demo, PAIR, scheme=scheme, seed=3)
    m = split.manifest
    sets = {h: _subjects(demo, split_part.units) for h, split_part in
            (("test", split.test), ("proxy", split.proxy), ("labelled", split.labelled))}
    client_units = {u for c in split.clients for u in c.data.units}
    sets["clients"] = _subjects(demo, client_units)
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], (a, b)
    assert sets["clients"] <= set(m["groups"]["pool"])
    assert len(split.test) == m["rows"]["test"] > 0


def test_ur_fall_paper_split_by_run(data_dir):
    recs = load_dataset("ur_fall", data_dir)
    split = make_split(recs, ("acce", "depth"), seed=0)
    units = split.manifest["units"]
    assert sum(u.startswith("fall") for u in units["test"]) == 3
    assert sum(u.startswith("adl") for u in units["test"]) == 4
    assert sum(u.startswith("fall") for u in units["proxy"]) == 3 and len(units["proxy"]) == 7
    everything = [u for h in ("test", "proxy", "labelled", "pool") for u in units[h]]
    assert len(everything) == len(set(everything)) == 70
    assert split.manifest["paper"]["n_div"] == 10
    assert split.label_names == ("not_lying", "falling", "lying")
    subject = make_split(recs, ("acce", "depth"), scheme="subject", seed=0)
    assert len(subject.clients) == len(units["pool"])  # one client per run
    assert all(len(set(c.data.units)) == 1 for c in subject.clients)


def test_same_seed_same_split_other_seed_differs(demo):
    a = make_split(demo, PAIR, seed=5, missing_rate=0.5)
    b = make_split(demo, PAIR, seed=5, missing_rate=0.5)
    c = make_split(demo, PAIR, seed=6, missing_rate=0.5)
    assert json.dumps(a.manifest, sort_keys=True) == json.dumps(b.manifest, sort_keys=True)
    for ca, cb in zip(a.clients, b.clients):
        for m in ca.modalities:
            np.testing.assert_array_equal(ca.data.modalities[m], cb.data.modalities[m])
    assert a.manifest["clients"] != c.manifest["clients"]


def test_modality_assignment_and_missing_rate(demo):
    split = make_split(demo, PAIR, clients=(2, 3, 4), seed=1)
    assert [c.client_id for c in split.clients] == [f"c{i:03d}" for i in range(9)]
    assert [c.modalities for c in split.clients] == [("acce",)] * 2 + [("gyro",)] * 3 + [PAIR] * 4
    for c in split.clients:
        assert set(c.data.modalities) == set(c.modalities)
    for part in (split.test, split.proxy, split.labelled):
        assert set(part.modalities) == set(PAIR)
    assert split.channels == {"acce": 3, "gyro": 3}
    none_missing = make_split(demo, PAIR, clients=(0, 0, 20), missing_rate=0.0)
    assert all(len(c.modalities) == 2 for c in none_missing.clients)
    all_missing = make_split(demo, PAIR, clients=(0, 0, 20), missing_rate=1.0)
    assert all(len(c.modalities) == 1 for c in all_missing.clients)
    assert {c.modalities[0] for c in all_missing.clients} == set(PAIR)  # both kinds of loss occur
    assert set(all_missing.manifest["dropped_modality"]) == {c.client_id for c in all_missing.clients}


def test_paper_clients_segments_follow_client_idxs(demo):
    split = make_split(demo, PAIR, seed=2)
    paper = split.manifest["paper"]
    lengths = {r.unit: len(r) for r in demo}
    for c, entry in zip(split.clients, split.manifest["clients"]):
        assert len(c.data) == paper["n_div"] * paper["len_seg"]  # pieces cut at unit ends add up
        assert sum(b - a for _, a, b in entry["segments"]) == len(c.data)
        for unit, a, b in entry["segments"]:
            assert 0 <= a < b <= lengths[unit]  # no piece crosses a run
        seg = c.data.segments
        assert seg[0, 0] == 0 and seg[-1, 1] == len(c.data) and (seg[1:, 0] == seg[:-1, 1]).all()


def test_subject_scheme_one_client_per_subject(demo):
    split = make_split(demo, PAIR, scheme="subject", clients=(1, 1, 1), seed=0)
    pool = split.manifest["groups"]["pool"]
    assert len(split.clients) == len(pool) == 5
    assert sorted(len(c.modalities) for c in split.clients).count(2) in (1, 2)
    for c in split.clients:
        assert len(_subjects(demo, c.data.units)) == 1
        assert len(c.data) == sum(len(r) for r in demo if r.unit in c.data.units)


def test_normaliser_is_fitted_on_the_pool_only(demo):
    split = make_split(demo, PAIR, seed=4, normalize="train")
    pool_units = set(split.manifest["units"]["pool"])
    raw = np.concatenate([r.modalities["acce"] for r in demo if r.unit in pool_units]).astype(np.float64)
    np.testing.assert_allclose(split.normalizer.mean["acce"], raw.mean(0), rtol=1e-5)
    # No leakage: scaling the test subjects' data changes neither statistics nor client data.
    test_units = set(split.manifest["units"]["test"])
    tampered = [Recording(r.dataset, r.unit, r.subject, r.rate_hz,
                          {m: x * 100 + 7 if r.unit in test_units else x for m, x in r.modalities.items()},
                          r.labels, r.timestamps, r.label_names) for r in demo]
    again = make_split(tampered, PAIR, seed=4, normalize="train")
    np.testing.assert_array_equal(again.normalizer.std["gyro"], split.normalizer.std["gyro"])
    np.testing.assert_array_equal(again.clients[-1].data.modalities["gyro"], split.clients[-1].data.modalities["gyro"])
    assert not np.allclose(again.test.modalities["acce"], split.test.modalities["acce"])
    # the pool is standardised; the test set only approximately (other subjects)
    pool_rows = np.concatenate([c.data.modalities["acce"] for c in split.clients if "acce" in c.modalities])
    assert abs(pool_rows.mean()) < 0.3


def test_per_unit_and_no_normalisation(demo):
    unit = make_split(demo, PAIR, normalize="unit")
    assert unit.normalizer is None
    seg = unit.test.segments[0]
    np.testing.assert_allclose(unit.test.modalities["acce"][seg[0]:seg[1]].mean(0), 0, atol=1e-4)
    raw = make_split(demo, PAIR, normalize="none")
    test_unit = raw.test.units[0]
    np.testing.assert_array_equal(raw.test.modalities["acce"][: len(raw.test)],
                                  next(r for r in demo if r.unit == test_unit).modalities["acce"])


def test_manifest_written_with_the_pool_statistics(demo, tmp_path):
    split = make_split(demo, PAIR, seed=9)
    write_manifest(split, tmp_path / "split.json")
    back = json.loads((tmp_path / "split.json").read_text())
    assert back["seed"] == 9 and back["scheme"] == "paper" and back["pair"] == list(PAIR)
    assert len(back["clients"]) == 30
    np.testing.assert_array_equal(np.asarray(back["normalizer"]["mean"]["gyro"], np.float32),
                                  split.normalizer.mean["gyro"])


def test_bad_arguments(demo):
    with pytest.raises(ValueError, match="scheme"):
        make_split(demo, PAIR, scheme="iid")
    with pytest.raises(ValueError, match="lacks"):
        make_split(demo, ("acce", "depth"))
    with pytest.raises(ValueError, match="holdout"):
        make_split(demo, PAIR, holdout={"test": ["user01"], "proxy": ["user01"], "labelled": ["user04"]})
    explicit = make_split(demo, PAIR, holdout={"test": ["user01"], "proxy": ["user04"], "labelled": ["user07"]})
    assert explicit.manifest["groups"]["test"] == ["user01"]


@pytest.mark.parametrize("seed", range(5))
def test_disjoint_for_many_seeds(demo, seed):
    m = make_split(demo, PAIR, seed=seed).manifest
    groups = [g for h in ("test", "proxy", "labelled", "pool") for g in m["groups"][h]]
    assert len(groups) == len(set(groups)) == 8
    client_units = {seg[0] for c in m["clients"] for seg in c["segments"]}
    assert client_units <= set(m["units"]["pool"])


def test_opportunity_uses_the_papers_fixed_runs(tmp_path):
    rng = np.random.default_rng(0)
    recs = []
    for s in range(1, 5):
        for r in range(1, 6):
            n = 200
            recs.append(Recording("opportunity", f"S{s}-ADL{r}", f"S{s}", 30.0,
                                  {"acce": rng.normal(size=(n, 63)).astype(np.float32),
                                   "gyro": rng.normal(size=(n, 15)).astype(np.float32)},
                                  np.zeros(n, np.int64), np.arange(n) / 30.0, ("null",)))
    split = make_split(recs, PAIR, seed=1, n_div=10)
    units = split.manifest["units"]
    assert sorted(units["test"]) == ["S2-ADL4", "S2-ADL5", "S3-ADL4", "S3-ADL5"]
    assert sorted(units["proxy"]) == ["S1-ADL4", "S1-ADL5", "S4-ADL4", "S4-ADL5"]
    assert len(units["pool"]) == 10 and split.manifest["disjoint_by"] == "unit"
    assert split.manifest == make_split(recs, PAIR, seed=1, n_div=10).manifest


def test_reserved_groups_are_never_labelled_and_nothing_else_moves(data_dir):
    recs = load_dataset("ur_fall", data_dir)
    plain = make_split(recs, ("acce", "depth"), seed=101)
    reserved = set(plain.labelled.units[:2])
    split = make_split(recs, ("acce", "depth"), seed=101, reserved=reserved)
    assert not reserved & set(split.labelled.units) and len(split.labelled.units) == len(plain.labelled.units)
    assert split.test.units == plain.test.units and split.proxy.units == plain.proxy.units
    assert set(plain.labelled.units) - reserved <= set(split.labelled.units)
    with pytest.raises(SplitError, match="outside the 70 reserved"):
        make_split(recs, ("acce", "depth"), seed=101, reserved={r.unit for r in recs})
