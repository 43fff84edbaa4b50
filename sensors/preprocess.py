"""Cleaning, alignment and normalisation of raw sensor arrays (vectorised numpy, float32).

The paper's ``fill_nan`` was an element-wise Python double loop; here the same rule
(forward fill per column, leading gaps -> 0) is one ``maximum.accumulate``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sensors.partition import Normalizer, Partition

# Channels whose training std is below this are treated as constant (std := 1), so
# z-scoring never divides by ~0 and a dead sensor channel stays at 0 instead of exploding.
MIN_STD = 1e-6


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Replace NaN/Inf by the last finite value of the same column; leading gaps become 0.

    Works on [T] or [T, C]; returns float32. No Python loop over rows or columns.
    """
    a = np.asarray(x, dtype=np.float32)
    flat = a.reshape(a.shape[0], -1)
    bad = ~np.isfinite(flat)
    if not bad.any():
        return a if a is x else a.copy()
    rows = np.arange(flat.shape[0])[:, None]
    idx = np.where(bad, -1, rows)  # -1 marks "no finite value yet"
    np.maximum.accumulate(idx, axis=0, out=idx)
    cols = np.arange(flat.shape[1])[None, :]
    out = flat[np.maximum(idx, 0), cols]
    out[idx < 0] = 0.0
    return out.reshape(a.shape)


def align_nearest(src_t: np.ndarray, src_x: np.ndarray, dst_t: np.ndarray) -> np.ndarray:
    """For every destination time take the source row with the nearest timestamp.

    Used where the paper pairs asynchronous streams (UR Fall accelerometer ~60 Hz
    irregular -> 30 fps camera frames). ``src_t`` must be sorted.
    """
    src_t = np.asarray(src_t, dtype=np.float64)
    dst_t = np.asarray(dst_t, dtype=np.float64)
    if src_t.size == 0:
        raise ValueError("cannot align an empty source stream")
    right = np.clip(np.searchsorted(src_t, dst_t), 1, max(src_t.size - 1, 1))
    left = right - 1
    if src_t.size == 1:
        pick = np.zeros_like(right)
    else:
        pick = np.where(np.abs(dst_t - src_t[left]) <= np.abs(src_t[right] - dst_t), left, right)
    return np.asarray(src_x, dtype=np.float32)[pick]


def resample_linear(src_t: np.ndarray, src_x: np.ndarray, dst_t: np.ndarray) -> np.ndarray:
    """Linear interpolation of every column of ``src_x`` onto ``dst_t`` (edges held constant).

    Used to bring a modality recorded at another rate onto a recording's time base.
    """
    src_t = np.asarray(src_t, dtype=np.float64)
    x = np.asarray(src_x, dtype=np.float64).reshape(src_t.size, -1)
    out = np.empty((np.asarray(dst_t).size, x.shape[1]), dtype=np.float32)
    for c in range(x.shape[1]):  # np.interp is 1-D; channels are few
        out[:, c] = np.interp(dst_t, src_t, x[:, c])
    return out


def uniform_timestamps(n: int, rate_hz: float, t0: float = 0.0) -> np.ndarray:
    """float64 seconds of ``n`` samples at a fixed rate."""
    return t0 + np.arange(n, dtype=np.float64) / float(rate_hz)


def fit_normalizer(arrays: Iterable[dict[str, np.ndarray]], modalities: Iterable[str]) -> Normalizer:
    """Per-channel mean/std over all rows of ``arrays`` (training rows only: never test/proxy).

    Accumulated in float64 as sums so it is one pass and independent of chunking.
    """
    mods = tuple(modalities)
    n: dict[str, int] = {m: 0 for m in mods}
    s: dict[str, np.ndarray] = {}
    ss: dict[str, np.ndarray] = {}
    for arr in arrays:
        for m in mods:
            x = np.asarray(arr[m], dtype=np.float64)
            if m not in s:
                s[m] = np.zeros(x.shape[1])
                ss[m] = np.zeros(x.shape[1])
            n[m] += x.shape[0]
            s[m] += x.sum(axis=0)
            ss[m] += np.square(x).sum(axis=0)
    mean, std = {}, {}
    for m in mods:
        if n[m] == 0:
            raise ValueError(f"no training rows to fit the normaliser for modality {m!r}")
        mu = s[m] / n[m]
        var = np.maximum(ss[m] / n[m] - mu * mu, 0.0)
        sd = np.sqrt(var)
        sd[sd < MIN_STD] = 1.0
        mean[m] = mu.astype(np.float32)
        std[m] = sd.astype(np.float32)
    return Normalizer(mean=mean, std=std)


def zscore_each(x: np.ndarray) -> np.ndarray:
    """z-score a single array with its own statistics (the paper's per-run/per-subject scheme)."""
    x64 = np.asarray(x, dtype=np.float64)
    mu = x64.mean(axis=0)
    sd = x64.std(axis=0)
    sd[sd < MIN_STD] = 1.0
    return ((x64 - mu) / sd).astype(np.float32)


def normalize_partition(p: Partition, norm: Normalizer) -> Partition:
    """Apply federation statistics to a partition (e.g. raw samples read from the on-device store).

    Modalities the normaliser does not know are passed through unchanged.
    """
    mods = {m: norm.apply(m, x) if m in norm.mean else x for m, x in p.modalities.items()}
    return Partition(mods, p.labels, p.segments, p.units)
