"""Upload magnitude bounds and the robust means (fedmekt/robust.py) on hand-made uploads."""

from __future__ import annotations

import numpy as np
import pytest

from fedmekt import robust
from fedmekt.streaming import StreamingMean


def test_magnitude_rejects_huge_and_nonfinite_uploads_and_accepts_honest_ones():
    ref = robust.reference({"emb/acce/z": np.full((4, 3), 0.2, np.float32)})
    assert ref == {"emb/acce/z": robust.RMS_FLOOR}  # a small reference is floored
    honest = {"emb/acce/z": np.full((4, 3), 0.7, np.float32)}
    robust.check_magnitude(honest, ref, "c0")
    with pytest.raises(ValueError, match="beyond 100x"):
        robust.check_magnitude({"emb/acce/z": np.full((4, 3), 3e38, np.float32)}, ref, "c1")
    bad = np.zeros((4, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        robust.check_magnitude({"emb/acce/z": bad}, ref, "c2")


def test_clip_bounds_outliers_and_leaves_honest_uploads_untouched():
    ref = {"k": 1.0}
    honest = {"k": np.full(5, 0.5, np.float32)}
    assert robust.clip(honest, ref)["k"] is honest["k"]
    clipped = robust.clip({"k": np.full(5, 30.0, np.float32)}, ref)["k"]
    assert robust.rms(clipped) == pytest.approx(robust.CLIP_FACTOR, rel=1e-6)


def test_trimmed_mean_drops_the_extremes_per_coordinate_and_equals_the_mean_without_trimming():
    values = [np.array([1.0, 10.0]), np.array([2.0, 20.0]), np.array([3.0, 30.0]), np.array([4.0, 40.0]),
              np.array([1000.0, -1000.0])]
    trimmed, plain = robust.TrimmedMean(0.2), StreamingMean()
    for v in values:
        trimmed.add("k", v, 1.0)
        plain.add("k", v, 1.0)
    # per coordinate the lowest and the highest of 5 are dropped
    np.testing.assert_allclose(trimmed.mean()["k"], [3.0, 20.0])
    assert trimmed.count("k") == 5 and trimmed.keys() == ["k"]
    few = robust.TrimmedMean(0.2)  # fewer than 5 uploads: nothing to trim, the weighted mean
    for v, w in zip(values[:3], (1.0, 2.0, 1.0)):
        few.add("k", v, w)
    np.testing.assert_allclose(few.mean()["k"], [2.0, 20.0])
