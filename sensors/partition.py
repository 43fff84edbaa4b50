"""Split-level data containers shared by the simulator, clients and aggregator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Partition:
    """Rows of several units concatenated, time-aligned across modalities.

    ``segments`` [S, 2] holds the [start, stop) row ranges of contiguous pieces, so
    windows never straddle two runs or subjects.
    """

    modalities: dict[str, np.ndarray]
    labels: np.ndarray
    segments: np.ndarray
    units: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ClientPartition:
    """One client's private data: only the modalities it holds are present."""

    client_id: str
    modalities: tuple[str, ...]
    data: Partition


@dataclass
class Normalizer:
    """Per-modality, per-channel z-score statistics fitted on training rows only."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    def apply(self, modality: str, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean[modality]) / self.std[modality]).astype(np.float32, copy=False)


@dataclass
class FederatedSplit:
    """Everything one federated experiment needs, disjoint by unit and reproducible from ``manifest``."""

    dataset: str
    pair: tuple[str, str]
    label_names: tuple[str, ...]
    test: Partition
    proxy: Partition
    labelled: Partition
    clients: list[ClientPartition]
    normalizer: Normalizer | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> dict[str, int]:
        return {m: int(self.proxy.modalities[m].shape[1]) for m in self.pair}
