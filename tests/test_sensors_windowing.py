"""Windows are views, never cross segments, and random crops keep modalities and labels aligned."""

from __future__ import annotations

import numpy as np
import pytest

from sensors.partition import Partition
from sensors.windowing import gather_windows, paper_crop_length, random_crops, sliding_windows, window_starts


@pytest.fixture
def part() -> Partition:
    """Row r holds value r in every channel, so a window's rows reveal where it came from."""
    n = 100
    rows = np.arange(n, dtype=np.float32)[:, None]
    return Partition(
        {"acce": np.repeat(rows, 3, axis=1), "gyro": np.repeat(rows, 2, axis=1) + 1000},
        np.arange(n, dtype=np.int64),
        np.array([[0, 30], [30, 35], [35, 100]]),
        ("a", "b", "c"),
    )


def test_sliding_windows_is_a_view_with_the_right_rows():
    x = np.arange(20 * 2, dtype=np.float32).reshape(20, 2)
    w = sliding_windows(x, window=5, stride=3)
    assert w.shape == (6, 5, 2)
    assert np.shares_memory(w, x)
    assert not w.flags.writeable
    for i in range(6):
        np.testing.assert_array_equal(w[i], x[i * 3 : i * 3 + 5])
    assert sliding_windows(x, window=21, stride=1).shape == (0, 21, 2)


def test_window_starts_never_cross_segments(part):
    starts = window_starts(part, window=10, stride=5)
    for s in starts:
        seg = part.segments[(part.segments[:, 0] <= s) & (s < part.segments[:, 1])][0]
        assert s + 10 <= seg[1]
    # segment [30, 35) is shorter than the window: no start inside it
    assert not ((starts >= 30) & (starts < 35)).any()
    np.testing.assert_array_equal(starts[:5], [0, 5, 10, 15, 20])


def test_gather_windows_equals_sliding_view(part):
    x = part.modalities["acce"]
    starts = np.arange(0, 91, 7)
    np.testing.assert_array_equal(gather_windows(x, starts, 10), sliding_windows(x, 10, 7)[: len(starts)])
    with pytest.raises(IndexError):
        gather_windows(x, np.array([95]), 10)


def test_random_crops_aligned_reproducible_and_within_segments(part):
    data, labels = random_crops(part, batch=8, length=12, rng=np.random.default_rng(3))
    assert data["acce"].shape == (8, 12, 3) and data["gyro"].shape == (8, 12, 2) and labels.shape == (8, 12)
    assert data["acce"].dtype == np.float32 and labels.dtype == np.int64
    starts = data["acce"][:, 0, 0].astype(int)
    assert len(set(starts)) == 8  # without replacement
    np.testing.assert_array_equal(labels, data["acce"][..., 0].astype(int))      # labels aligned to rows
    np.testing.assert_array_equal(data["gyro"][..., 0] - 1000, data["acce"][..., 0])  # modalities aligned
    assert set(starts) <= set(window_starts(part, 12, 1))
    again, _ = random_crops(part, batch=8, length=12, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(again["acce"], data["acce"])


def test_random_crops_rejects_too_long_crops(part):
    with pytest.raises(ValueError):
        random_crops(part, batch=2, length=70, rng=np.random.default_rng(0))


def test_paper_crop_length():
    assert paper_crop_length(1000, 24) == 41
    assert paper_crop_length(1000, 24, seg_len=30) == 29
