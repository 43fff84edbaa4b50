"""Paired differences: the t-interval on tiny hand-checked numbers, pairing by key, n = 1 and the adoption rule."""

from __future__ import annotations

import math

import pytest

from fedmekt.errors import UserError
from fedmekt.experiment.statistics import paired_difference

T_975_DF2 = 4.302652729911275   # Student t quantile 0.975, 2 degrees of freedom (tables)


def test_interval_is_mean_plus_minus_t_times_standard_error():
    d = paired_difference({0: 1.5, 1: 2.0, 2: 3.5}, {0: 0.5, 1: 0.0, 2: 0.5})   # differences 1, 2, 3
    half = T_975_DF2 * 1.0 / math.sqrt(3)                                     # sd of 1, 2, 3 is 1
    assert (d.n, d.mean) == (3, pytest.approx(2.0))
    assert d.low == pytest.approx(2.0 - half) and d.high == pytest.approx(2.0 + half)
    assert d.low < 0 and not d.above_zero          # mean 2 but only 3 noisy pairs: no evidence
    assert d.text() == f"+2.0000 [{2 - half:+.4f}, {2 + half:+.4f}] (n=3)"


def test_pairs_only_shared_finite_keys():
    d = paired_difference({0: 0.7, 1: 0.6, 2: float("nan"), 9: 0.1}, {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.9})
    assert d.n == 2 and d.mean == pytest.approx(0.15)


def test_consistent_small_gains_are_above_zero():
    d = paired_difference({s: 0.60 + 0.01 + 0.001 * (s % 2) for s in range(5)}, {s: 0.60 for s in range(5)})
    assert d.above_zero and d.low > 0.009


def test_one_pair_has_no_interval_and_says_so():
    d = paired_difference({0: 0.8}, {0: 0.5})
    assert (d.n, d.low, d.high, d.above_zero) == (1, None, None, False)
    assert d.text() == "+0.3000 (n=1, no interval)"
    none = paired_difference({0: 0.8}, {1: 0.5})
    assert none.n == 0 and none.text() == "–" and not none.above_zero


def test_level_must_be_a_probability():
    with pytest.raises(ValueError):
        paired_difference({0: 1.0}, {0: 0.0}, level=95)


def _final(variant, seed, acce, reference=False):
    """A final.jsonl record with what the report reads (probe F1 ``acce`` on test acce, 0.5 elsewhere)."""
    probe = {f"probe_{k}_{m}": 0.5 for k in ("f1_weighted", "f1_macro", "accuracy") for m in ("acce", "depth")}
    return {**probe, "run": f"{variant}-seed{seed}", "algorithm": variant, "variant": variant, "seed": seed,
            "dataset": "d", "pair": "acce-depth", "clients": [1, 1, 1], "rounds": 2, "reference": reference,
            "probe_f1_weighted_acce": acce, "majority_f1_weighted": 0.3, "majority_accuracy": 0.4,
            "wire_dtype": "float32", "layers": "rep", "proxy_windows": 4, "window": 8, "bytes_proxy_once": 0,
            "wall_s": 1.0}


def test_report_pairs_every_row_with_mmfedavg_by_seed():
    from fedmekt.observe.report import paired_differences, render_markdown, summarize

    base, algo, raw = [0.60, 0.70, 0.65], [0.64, 0.72, 0.70], [0.50, 0.55, 0.52]
    finals = ([_final("mmfedavg", s, v) for s, v in enumerate(base)] + [_final("fedmekt-c", s, v) for s, v in
              enumerate(algo)] + [_final("raw-features", s, v, reference=True) for s, v in enumerate(raw)])
    rows = [{"run": f["run"], "round": r, "f1_paper_acce": f["probe_f1_weighted_acce"] - 0.1, "f1_paper_depth": 0.4,
             "bytes_up": 10, "bytes_down": 10} for f in finals if not f["reference"] for r in range(2)]
    paired = {(d["algorithm"], d["test"]): d for d in paired_differences(rows, finals)}
    assert set(paired) == {(a, m) for a in ("fedmekt-c", "raw-features") for m in ("acce", "depth")}
    expected = paired_difference(dict(enumerate(algo)), dict(enumerate(base)))
    got = paired[("fedmekt-c", "acce")]
    assert (got["pairs"], got["probe_diff_low"], got["probe_diff_high"]) == (3, expected.low, expected.high)
    assert got["paper_diff_mean"] == pytest.approx(expected.mean)        # paper metric shifted alike
    assert paired[("raw-features", "acce")]["paper_diff"] == "–"          # no rounds, no paper metric
    assert paired[("raw-features", "acce")]["probe_diff_high"] < 0
    acc, comm = summarize(rows, finals)
    assert [a["algorithm"] for a in acc][-2:] == ["raw-features"] * 2 and len(comm) == 2
    md = render_markdown(acc, comm, list(paired.values()))
    assert "| d | acce-depth | fedmekt-c | acce | 3 | " + expected.text() in md


def _paired(finals):
    from fedmekt.observe.report import paired_differences

    return paired_differences([], finals)


def test_pairing_refuses_a_seed_that_occurs_twice():
    finals = [_final("mmfedavg", 0, 0.6), _final("mmfedavg", 1, 0.7), _final("fedmekt-c", 0, 0.6),
              _final("fedmekt-c", 1, 0.7)]
    assert len(_paired(finals)) == 2   # the well-formed folder pairs
    with pytest.raises(UserError, match=r"cannot pair fedmekt-c: seed\(s\) \[1\] occur more than once"):
        _paired(finals + [_final("fedmekt-c", 1, 0.9)])


def test_pairing_refuses_runs_of_another_schedule():
    finals = [_final("mmfedavg", s, 0.6) for s in range(2)] + [_final("fedmekt-c", s, 0.6) for s in range(2)]
    finals[-1] = {**finals[-1], "rounds": 100}
    with pytest.raises(UserError, match="cannot pair fedmekt-c with mmfedavg: rounds differs"):
        _paired(finals)


def test_rows_pair_with_proxy_only_too():
    finals = ([_final("mmfedavg", s, 0.6) for s in range(3)] + [_final("fedmekt-c", s, 0.7 + s / 100) for s in
              range(3)] + [_final("proxy-only", s, 0.5, reference=True) for s in range(3)])
    against = {(d["algorithm"], d["against"]): d for d in _paired(finals) if d["test"] == "acce"}
    assert set(against) == {("fedmekt-c", "mmfedavg"), ("proxy-only", "mmfedavg"), ("fedmekt-c", "proxy-only"),
                            ("mmfedavg", "proxy-only")}
    assert against[("fedmekt-c", "proxy-only")]["probe_diff_mean"] == pytest.approx(0.21)
    assert against[("fedmekt-c", "proxy-only")]["probe_diff_low"] > 0


def test_a_variant_pairs_with_its_algorithm_at_the_defaults():
    finals = ([_final("mmfedavg", s, 0.6) for s in range(3)] + [_final("fedmekt-c", s, 0.7) for s in range(3)]
              + [{**_final("fedmekt-c", s, 0.65 + s / 100), "variant": "fedmekt-c[float32]",
                  "run": f"fedmekt-c_float32-seed{s}"} for s in range(3)])
    against = {(d["algorithm"], d["against"]): d for d in _paired(finals) if d["test"] == "acce"}
    assert set(against) == {("fedmekt-c", "mmfedavg"), ("fedmekt-c[float32]", "mmfedavg"),
                            ("fedmekt-c[float32]", "fedmekt-c")}   # the defaults never pair back with a variant
    assert against[("fedmekt-c[float32]", "fedmekt-c")]["probe_diff_mean"] == pytest.approx(-0.04)


def test_headroom_pairs_the_ceiling_with_labelled_only():
    finals = ([_final("labelled-only", s, 0.6, reference=True) for s in range(3)]
              + [_final("supervised-ceiling", s, 0.8 + s / 100, reference=True) for s in range(3)])
    (acce,) = [d for d in _paired(finals) if d["test"] == "acce"]
    assert (acce["algorithm"], acce["against"]) == ("supervised-ceiling", "labelled-only")
    assert acce["probe_diff_mean"] == pytest.approx(0.21) and acce["probe_diff_low"] > 0


def test_deployed_figures_pair_only_where_both_rows_have_a_head():
    finals = ([{**_final("labelled-only", s, 0.6, reference=True), "deployed_f1_weighted_acce": 0.5} for s in range(3)]
              + [{**_final("mmfedavg", s, 0.6), "deployed_f1_weighted_acce": 0.55 + s / 100} for s in range(3)]
              + [_final("proxy-only", s, 0.6, reference=True) for s in range(3)])
    pairs = {(d["algorithm"], d["against"]): d for d in _paired(finals) if d["test"] == "acce"}
    assert pairs[("labelled-only", "mmfedavg")]["deployed_diff_mean"] == pytest.approx(-0.06)
    assert pairs[("mmfedavg", "labelled-only")]["deployed_diff_mean"] == pytest.approx(0.06)
    assert pairs[("proxy-only", "mmfedavg")]["deployed_diff"] == "–"   # proxy-only ships no head
