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
