"""Paired differences with a t-interval: how two methods compare on the SAME splits.

Seeds (or seed × fold) pair the runs: each draws its own split, so the split's luck is shared by both
methods and cancels in the difference, which levels over seeds cannot do. The 95 % interval is Student's
t over the paired differences (``scipy.stats.t``); with one pair there is no interval, and it says so.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (a − b) over the shared keys and its two-sided interval (None when n < 2)."""

    n: int
    mean: float
    low: float | None
    high: float | None
    level: float = 0.95

    @property
    def above_zero(self) -> bool:
        """True only when the whole interval lies above zero (the adoption rule); never for n < 2."""
        return self.low is not None and self.low > 0

    def text(self) -> str:
        """``+0.0123 [-0.0101, +0.0347] (n=5)``; ``+0.0123 (n=1, no interval)``; ``–`` with nothing paired."""
        if self.n == 0:
            return "–"
        if self.low is None:
            return f"{self.mean:+.4f} (n={self.n}, no interval)"
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}] (n={self.n})"


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
                      level: float = 0.95) -> PairedDifference:
    """a − b over the keys both hold with finite values (keys = seeds, or (seed, fold) pairs)."""
    from scipy import stats

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    diffs = np.array([float(a[k]) - float(b[k]) for k in a if k in b], dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    n = int(diffs.size)
    if n == 0:
        return PairedDifference(0, float("nan"), None, None, level)
    mean = float(diffs.mean())
    if n == 1:
        return PairedDifference(1, mean, None, None, level)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(diffs.std(ddof=1)) / math.sqrt(n)
    return PairedDifference(n, mean, mean - half, mean + half, level)
