"""The one record type every reader produces and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNLABELLED = -1


@dataclass
class Recording:
    """One subject's run (or one device's log): time-aligned modalities at one rate.

    ``modalities[m]`` is float32 [T, C_m]; ``labels`` is int64 [T] with values in
    0..K-1 indexing ``label_names`` and ``UNLABELLED`` (-1) for rows without a label;
    ``timestamps`` is float64 seconds [T], strictly increasing.
    """

    dataset: str
    unit: str
    subject: str
    rate_hz: float
    modalities: dict[str, np.ndarray]
    labels: np.ndarray
    timestamps: np.ndarray
    label_names: tuple[str, ...]
    channel_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class SampleBatch:
    """A run of live samples from one unit (device/session), as sources yield and the store persists.

    ``timestamps`` float64 seconds [n] (strictly increasing within a source), ``modalities[m]``
    float32 [n, C_m], ``labels`` int64 [n] (``UNLABELLED`` when the device does not know).
    """

    timestamps: np.ndarray
    modalities: dict[str, np.ndarray]
    labels: np.ndarray
    unit: str = "live"

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def slice(self, start: int, stop: int | None = None) -> SampleBatch:
        """Rows [start, stop) as a new batch (views, no copy)."""
        return SampleBatch(self.timestamps[start:stop], {m: x[start:stop] for m, x in self.modalities.items()},
                           self.labels[start:stop], self.unit)

    @staticmethod
    def concat(batches: list[SampleBatch]) -> SampleBatch:
        """Join batches of the same unit and modalities (in order)."""
        first = batches[0]
        if len(batches) == 1:
            return first
        return SampleBatch(
            np.concatenate([b.timestamps for b in batches]),
            {m: np.concatenate([b.modalities[m] for b in batches]) for m in first.modalities},
            np.concatenate([b.labels for b in batches]),
            first.unit,
        )
