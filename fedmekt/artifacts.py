"""What a finished (or checkpointed) run leaves on disk, read by export and infer.

A run folder holds ``run.json`` (:class:`RunInfo`), ``metrics.jsonl`` (one JSON
object per round) and ``final_model.safetensors`` (state dicts of the split
autoencoder under ``autoencoder.`` and of the head under ``head.``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sensors.files import atomic_write_bytes

RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
FINAL_MODEL = "final_model.safetensors"


def tensor_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file of named arrays. ``safetensors.numpy.save`` writes a non-contiguous array (a
    transposed embedding, say) in its storage order, so it would load back scrambled without an error:
    every array is made C-contiguous first."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


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


def write_run_info(run_dir: Path, info: RunInfo) -> None:
    atomic_write_bytes(Path(run_dir) / RUN_INFO, json.dumps(asdict(info), indent=2).encode())


def read_run_info(run_dir: Path) -> RunInfo:
    return RunInfo.from_json(json.loads((Path(run_dir) / RUN_INFO).read_text()))
