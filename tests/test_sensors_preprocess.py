"""Forward fill, alignment, resampling and normaliser fitting against plain reference code."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sensors.preprocess import align_nearest, fit_normalizer, forward_fill, resample_linear, zscore_each


def _ffill_reference(x: np.ndarray) -> np.ndarray:
    """The paper's element-wise double loop (dg:20-34), extended to Inf."""
    out = x.astype(np.float32).copy()
    for c in range(out.shape[1]):
        last = 0.0
        for t in range(out.shape[0]):
            if np.isfinite(out[t, c]):
                last = out[t, c]
            else:
                out[t, c] = last
    return out


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 5)),
              elements=st.sampled_from([np.nan, np.inf, -np.inf, 0.5, -2.0, 3.25, 7.0])))
def test_forward_fill_matches_reference_loop(x):
    got = forward_fill(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _ffill_reference(x))
    assert np.isfinite(got).all()


def test_forward_fill_leading_gap_is_zero_and_1d_works():
    x = np.array([np.nan, np.inf, 2.0, np.nan, -1.0, np.nan], dtype=np.float64)
    np.testing.assert_array_equal(forward_fill(x), np.array([0, 0, 2, 2, -1, -1], dtype=np.float32))


def test_align_nearest_picks_closest_timestamp():
    src_t = np.array([0.0, 0.1, 0.25, 0.4])
    src_x = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    got = align_nearest(src_t, src_x, np.array([-1.0, 0.04, 0.06, 0.2, 0.33, 9.0]))
    np.testing.assert_array_equal(got[:, 0], [0, 0, 1, 2, 3, 3])


def test_resample_linear_is_exact_on_linear_signals():
    src_t = np.linspace(0, 2, 21)  # 10 Hz
    src = np.stack([3 * src_t + 1, -src_t], axis=1)
    dst_t = np.linspace(0, 2, 101)  # 50 Hz
    got = resample_linear(src_t, src, dst_t)
    np.testing.assert_allclose(got, np.stack([3 * dst_t + 1, -dst_t], axis=1), rtol=1e-6, atol=1e-6)


def test_fit_normalizer_uses_all_given_rows_and_guards_constant_channels():
    rng = np.random.default_rng(0)
    a = {"acce": rng.normal(3, 2, (500, 3)).astype(np.float32), "gyro": np.ones((500, 2), np.float32)}
    b = {"acce": rng.normal(-1, 1, (300, 3)).astype(np.float32), "gyro": np.ones((300, 2), np.float32)}
    norm = fit_normalizer([a, b], ["acce", "gyro"])
    both = np.concatenate([a["acce"], b["acce"]]).astype(np.float64)
    np.testing.assert_allclose(norm.mean["acce"], both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std["acce"], both.std(0), rtol=1e-5)
    np.testing.assert_array_equal(norm.std["gyro"], [1, 1])  # constant channel: no division by ~0
    z = norm.apply("acce", both)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)


def test_zscore_each_standardises_one_array():
    x = np.random.default_rng(1).normal(5, 3, (1000, 2))
    z = zscore_each(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)


def test_normalize_partition_applies_federation_statistics():
    from sensors.partition import Normalizer, Partition
    from sensors.preprocess import normalize_partition

    p = Partition({"acce": np.full((4, 2), 3, np.float32), "depth": np.ones((4, 1), np.float32)},
                  np.zeros(4, np.int64), np.array([[0, 4]]), ("u",))
    norm = Normalizer({"acce": np.float32([1, 2])}, {"acce": np.float32([2, 1])})
    out = normalize_partition(p, norm)
    np.testing.assert_array_equal(out.modalities["acce"], np.tile(np.float32([1, 1]), (4, 1)))
    assert out.modalities["depth"] is p.modalities["depth"] and out.segments is p.segments
