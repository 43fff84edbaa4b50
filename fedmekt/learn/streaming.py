"""Weighted streaming mean of named arrays: memory independent of how many clients report.

The server folds each upload in as it arrives (MQTT order is arbitrary), so sums are kept in float64:
the float32 result is then the same whatever the arrival order, in practice bit for bit.
"""

from __future__ import annotations

import numpy as np


class StreamingMean:
    """Per-key weighted mean: ``add(key, array, weight)`` many times, then ``mean()``."""

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._weight: dict[str, float] = {}

    def add(self, key: str, value: np.ndarray, weight: float = 1.0) -> None:
        value = np.asarray(value, dtype=np.float64)
        if key in self._sum:
            if self._sum[key].shape != value.shape:
                raise ValueError(f"{key}: shape {value.shape} differs from {self._sum[key].shape}")
            self._sum[key] += weight * value
            self._weight[key] += weight
        else:
            self._sum[key] = weight * value
            self._weight[key] = float(weight)

    def count(self, key: str) -> float:
        """Total weight folded into ``key`` (0 when nobody sent it)."""
        return self._weight.get(key, 0.0)

    def keys(self) -> list[str]:
        return sorted(self._sum)

    def mean(self) -> dict[str, np.ndarray]:
        """float32 weighted means of every key seen."""
        return {k: (s / self._weight[k]).astype(np.float32) for k, s in sorted(self._sum.items())}
