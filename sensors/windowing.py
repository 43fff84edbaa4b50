"""Windows over partitions: fixed window/stride views (no copy) and the paper's random crops.

A window never straddles two segments (runs/subjects/client pieces): ``window_starts`` only
returns starts whose whole window lies inside one ``Partition.segments`` row range.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from sensors.partition import Partition


def sliding_windows(x: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Read-only view [n, window, C] of ``x`` [T, C]: window i = rows [i*stride, i*stride + window)."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be >= 1")
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    n = 0 if x.shape[0] < window else (x.shape[0] - window) // stride + 1
    s0, s1 = x.strides
    return as_strided(x, shape=(n, window, x.shape[1]), strides=(s0 * stride, s0, s1), writeable=False)


def window_starts(p: Partition, window: int, stride: int) -> np.ndarray:
    """int64 start rows of every window of ``window`` rows (step ``stride``) inside each segment."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be >= 1")
    parts = [np.arange(a, b - window + 1, stride, dtype=np.int64) for a, b in np.asarray(p.segments) if b - a >= window]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def gather_windows(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Copy windows starting at ``starts`` out of ``x`` [T, C] (or [T]) -> [n, window, C] (or [n, window])."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < 0 or starts.max() + window > x.shape[0]):
        raise IndexError("a window start lies outside the array")
    idx = starts[:, None] + np.arange(window, dtype=np.int64)[None, :]
    return np.ascontiguousarray(x[idx])


def random_crops(
    p: Partition, batch: int, length: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The paper's ``make_seq_batch``: ``batch`` aligned crops of ``length`` rows, starts drawn without replacement.

    Returns ({modality: float32 [batch, length, C]}, int64 labels [batch, length]). Crops never cross a
    segment boundary. When fewer distinct starts exist than ``batch``, starts are drawn with replacement
    (the paper would crash there). The draw is the same as choosing among ``window_starts(p, length, 1)``,
    without building that array (8 bytes a row), so memory stays flat however long the partition.
    """
    seg = np.asarray(p.segments, dtype=np.int64).reshape(-1, 2)
    counts = np.maximum(seg[:, 1] - seg[:, 0] - length + 1, 0)
    total, ends = int(counts.sum()), np.cumsum(counts)
    if total == 0:
        raise ValueError(f"no segment is at least {length} rows long")
    flat = rng.choice(total, size=batch, replace=total < batch)
    k = np.searchsorted(ends, flat, side="right")
    pick = np.sort(seg[k, 0] + flat - (ends[k] - counts[k]))
    data = {m: gather_windows(x, pick, length).astype(np.float32, copy=False) for m, x in p.modalities.items()}
    return data, gather_windows(p.labels, pick, length)


def paper_crop_length(rows: int, batch: int, seg_len: int | None = None) -> int:
    """``seq_len`` of ``make_seq_batch``: rows // batch, capped at seg_len - 1 when segments are given."""
    length = rows // batch
    if seg_len is not None:
        length = min(length, seg_len - 1)
    return max(length, 1)
