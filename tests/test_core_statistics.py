"""Paired differences: the t-interval on tiny hand-checked numbers, pairing by key, n = 1 and the adoption rule."""

from __future__ import annotations

import math

import pytest

from fedmekt.statistics import paired_difference

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
