"""Bounds on upload magnitudes and the robust aggregation options of the server.

The reference scale of every upload key is the RMS of the server's OWN downstream tensor of that key
in the same round (global embeddings of the same proxy windows for FedMEKT, global parameters for the
baselines), floored at ``RMS_FLOOR``. It is known before any upload arrives, so neither the arrival
order nor a first malicious upload can move it (a running median of the round's uploads could be
poisoned by whoever uploads first), and the result stays bit-identical between the in-process
reproduction and the MQTT deployment.

Measured on the demo federation (2+2+2 clients, seed 0, 10 rounds), honest uploads stay below 0.7 x the
reference in every round for FedMEKT-C and mmFedAvg, so:

* an upload with a non-finite value, or a key whose RMS exceeds ``REJECT_FACTOR`` x the reference, is
  rejected whole (the aggregator logs and counts it);
* ``clip`` scales each key down to at most ``CLIP_FACTOR`` x the reference (a no-op for honest uploads,
  bounds what a moderate outlier below the reject bound can do to the mean);
* ``trimmed`` is the coordinate-wise trimmed mean: per value, the ``TRIM`` fraction of the lowest and of
  the highest uploads is dropped before the weighted mean. It holds every upload of the round
  (memory O(uploads), unlike the streaming mean) and costs F1 even without an attacker.
"""

from __future__ import annotations

import math

import numpy as np

from fedmekt.streaming import StreamingMean

REJECT_FACTOR = 100.0
CLIP_FACTOR = 3.0
RMS_FLOOR = 1.0
TRIM = 0.2

Tensors = dict[str, np.ndarray]


def rms(x: np.ndarray) -> float:
    """Root mean square in float64 (inf for values whose square overflows float32)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def reference(downstream: Tensors) -> dict[str, float]:
    """Per-key reference scale: the RMS of the server's downstream tensor, floored."""
    return {k: max(rms(v), RMS_FLOOR) for k, v in downstream.items()}


def check_magnitude(upload: Tensors, ref: dict[str, float], who: str) -> None:
    """ValueError (one line) for a non-finite value or a key far beyond its reference scale."""
    for k in sorted(upload):
        v = upload[k]
        if not np.isfinite(v).all():
            raise ValueError(f"{who}: {k} has non-finite values")
        size, bound = rms(v), REJECT_FACTOR * ref.get(k, RMS_FLOOR)
        if not size <= bound:
            raise ValueError(f"{who}: {k} RMS {size:.3g} is beyond {REJECT_FACTOR:g}x the round's scale "
                             f"({bound:.3g})")


def clip(upload: Tensors, ref: dict[str, float]) -> Tensors:
    """Each key scaled down to RMS <= ``CLIP_FACTOR`` x its reference (unchanged when within)."""
    out = {}
    for k, v in upload.items():
        bound, size = CLIP_FACTOR * ref.get(k, RMS_FLOOR), rms(v)
        out[k] = v if size <= bound else (v * (bound / size)).astype(np.float32)
    return out


class TrimmedMean:
    """Coordinate-wise weighted trimmed mean with the interface of StreamingMean (add/count/keys/mean)."""

    def __init__(self, trim: float = TRIM) -> None:
        self.trim = trim
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

    def mean(self) -> dict[str, np.ndarray]:
        out = {}
        for k in self.keys():
            x = np.stack(self._values[k])
            w = np.asarray(self._weights[k], np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
            cut = math.floor(self.trim * len(x))
            order = np.argsort(x, axis=0, kind="stable")[cut:len(x) - cut]
            kept = np.take_along_axis(x, order, 0)
            kept_w = np.take_along_axis(np.broadcast_to(w, x.shape), order, 0)
            out[k] = ((kept * kept_w).sum(0) / kept_w.sum(0)).astype(np.float32)
        return out


def make_mean(mode: str) -> StreamingMean | TrimmedMean:
    """The accumulator of one round for ``robust_aggregation`` = none | clip | trimmed."""
    return TrimmedMean() if mode == "trimmed" else StreamingMean()
