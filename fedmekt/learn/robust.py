"""Bounds on upload magnitudes and the robust aggregation options of the server.

Two different bounds:

* **Reject** (every mode): an upload with a non-finite value, or a key whose RMS exceeds ``REJECT_FACTOR``
  x the reference, is rejected whole (the aggregator logs and counts it). The reference of every upload key
  is the RMS of the server's OWN downstream tensor of that key in the same round (global embeddings of the
  same proxy windows for FedMEKT, global parameters for the baselines), floored at ``REJECT_FLOOR``: known
  before any upload arrives, it only keeps absurd values (overflow, a stuck sensor times 1e6) out. It is
  far too loose to bound what one device does to a mean: 100 x the round's scale is allowed through.
* **Clip** (``clip``, the default, and ``trimmed`` when a round has too few uploads to trim): bounded by
  the round's honest spread, with no absolute floor. Per key, the centre is the coordinate-wise median of
  the round's uploads and the spread the median of the uploads' RMS distances to it; each upload is pulled
  towards the centre until its distance is at most ``CLIP_FACTOR`` x that spread, then the weighted mean
  is taken. With one device of n >= 3 (a minority), the median and the median distance are set by the
  honest uploads, so that device moves the result by at most about ``CLIP_FACTOR`` / n of the honest
  spread from what the honest uploads alone give, whatever it sends (``tests/test_core_robust.py``).
  Two uploads cannot outvote each other: with n = 2 nothing is clipped (only the reject bound holds).
  Honest uploads within ``CLIP_FACTOR`` x the median distance are untouched.
* ``trimmed`` is the coordinate-wise trimmed mean: per value, the ``TRIM`` fraction of the lowest and of
  the highest uploads is dropped before the weighted mean; with fewer than 1 / ``TRIM`` uploads (nothing to
  drop) it is the clipped mean above. It costs F1 even without an attacker.

Both robust modes hold every upload of the round (memory O(uploads of a round), a round's ``per_round``
uploads), unlike ``none``'s streaming mean. Their results do not depend on the order uploads arrive
(medians; sums taken over values sorted per coordinate), so the in-process reproduction and the MQTT
deployment stay bit-identical.
"""

from __future__ import annotations

import math

import numpy as np

from fedmekt.learn.streaming import StreamingMean

REJECT_FACTOR = 100.0
REJECT_FLOOR = 1.0
CLIP_FACTOR = 3.0
TRIM = 0.2

Tensors = dict[str, np.ndarray]


def rms(x: np.ndarray) -> float:
    """Root mean square in float64 (inf for values whose square overflows float32)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def reference(downstream: Tensors) -> dict[str, float]:
    """Per-key reference scale of the reject bound: the RMS of the server's downstream tensor, floored."""
    return {k: max(rms(v), REJECT_FLOOR) for k, v in downstream.items()}


def check_magnitude(upload: Tensors, ref: dict[str, float], who: str) -> None:
    """ValueError (one line) for a non-finite value or a key far beyond its reference scale."""
    for k in sorted(upload):
        v = upload[k]
        if not np.isfinite(v).all():
            raise ValueError(f"{who}: {k} has non-finite values")
        size, bound = rms(v), REJECT_FACTOR * ref.get(k, REJECT_FLOOR)
        if not size <= bound:
            raise ValueError(f"{who}: {k} RMS {size:.3g} is beyond {REJECT_FACTOR:g}x the round's scale "
                             f"({bound:.3g})")


def _weighted_sum(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum over axis 0 of values x weights, in an order that does not depend on the uploads' order."""
    return np.sort(values * weights, axis=0).sum(0)


def clipped_mean(x: np.ndarray, w: np.ndarray, factor: float = CLIP_FACTOR) -> np.ndarray:
    """Weighted mean of the uploads ``x`` (axis 0) after pulling each to within ``factor`` x the median RMS
    distance of the uploads from their coordinate-wise median."""
    centre = np.median(x, axis=0)
    dist = np.sqrt(np.mean(np.square(x - centre).reshape(len(x), -1), axis=1))
    bound = factor * float(np.median(dist))
    scale = np.where(dist > bound, bound / np.where(dist > 0, dist, 1.0), 1.0)
    scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
    pulled = np.where(scale < 1.0, centre + (x - centre) * scale, x)  # an upload within the bound: as sent
    return _weighted_sum(pulled, w) / float(np.sort(w.reshape(-1)).sum())


class RoundUploads:
    """Every upload of a round per key (float64) with its weight; the interface of StreamingMean
    (add/count/keys/mean), ``mean`` being the clipped mean."""

    def __init__(self) -> None:
        self._values: dict[str, list[np.ndarray]] = {}
        self._weights: dict[str, list[float]] = {}

    def add(self, key: str, value: np.ndarray, weight: float = 1.0) -> None:
        value = np.asarray(value, dtype=np.float64)
        held = self._values.setdefault(key, [])
        if held and held[0].shape != value.shape:
            raise ValueError(f"{key}: shape {value.shape} differs from {held[0].shape}")
        held.append(value)
        self._weights.setdefault(key, []).append(float(weight))

    def count(self, key: str) -> float:
        return float(sum(self._weights.get(key, ())))

    def keys(self) -> list[str]:
        return sorted(self._values)

    def stacked(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The uploads of ``key`` on axis 0, and their weights shaped to broadcast against them."""
        x = np.stack(self._values[key])
        return x, np.asarray(self._weights[key], np.float64).reshape((-1,) + (1,) * (x.ndim - 1))

    def estimate(self, key: str) -> np.ndarray:
        return clipped_mean(*self.stacked(key))

    def mean(self) -> dict[str, np.ndarray]:
        return {k: self.estimate(k).astype(np.float32) for k in self.keys()}


class TrimmedMean(RoundUploads):
    """Coordinate-wise weighted trimmed mean; the clipped mean when there are too few uploads to trim."""

    def __init__(self, trim: float = TRIM) -> None:
        super().__init__()
        self.trim = trim

    def estimate(self, key: str) -> np.ndarray:
        x, w = self.stacked(key)
        cut = math.floor(self.trim * len(x))
        if cut == 0:
            return clipped_mean(x, w)
        order = np.argsort(x, axis=0, kind="stable")[cut:len(x) - cut]
        kept = np.take_along_axis(x, order, 0)
        kept_w = np.take_along_axis(np.broadcast_to(w, x.shape), order, 0)
        return (kept * kept_w).sum(0) / kept_w.sum(0)


def make_mean(mode: str) -> StreamingMean | RoundUploads:
    """The accumulator of one round for ``robust_aggregation`` = none | clip | trimmed."""
    return {"clip": RoundUploads, "trimmed": TrimmedMean}.get(mode, StreamingMean)()
