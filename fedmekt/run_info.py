"""The record of a run that export and the gateways rebuild its model from: a plain dataclass, no I/O,
so the learning code can produce it (reading and writing ``run.json`` is :mod:`fedmekt.artifacts`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RUN_INFO = "run.json"


@dataclass
class RunInfo:
    """Everything needed to rebuild and deploy the global model without the training data."""

    federation: str
    algorithm: str
    dataset: str
    pair: tuple[str, str]
    channels: dict[str, int]
    rep_size: int
    hidden: int
    label_names: tuple[str, ...]
    window: int
    rate_hz: float
    rounds_completed: int
    norm_mean: dict[str, list[float]] = field(default_factory=dict)
    norm_std: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunInfo":
        """Parse a ``run.json``; ValueError for a run no gateway could use (its rate says how to feed it)."""
        data = dict(data)
        data["pair"] = tuple(data["pair"])
        data["label_names"] = tuple(data["label_names"])
        rate = data.get("rate_hz")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
            raise ValueError(f"{RUN_INFO} records no sampling rate (rate_hz = {rate!r}); a run made before the "
                             "dataset's rate was recorded must be run again")
        return cls(**data)
