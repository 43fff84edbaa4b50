"""What a finished (or checkpointed) run leaves on disk, read by export and infer.

A run folder holds ``run.json`` (:class:`RunInfo`), ``metrics.jsonl`` (one JSON
object per round) and ``final_model.safetensors`` (state dicts of the split
autoencoder under ``autoencoder.`` and of the head under ``head.``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedmekt.run_info import RUN_INFO, RunInfo
from sensors.files import atomic_write_bytes

METRICS = "metrics.jsonl"
FINAL_MODEL = "final_model.safetensors"


def tensor_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file of named arrays. ``safetensors.numpy.save`` writes a non-contiguous array (a
    transposed embedding, say) in its storage order, so it would load back scrambled without an error:
    every array is made C-contiguous first."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


def write_run_info(run_dir: Path, info: RunInfo) -> None:
    atomic_write_bytes(Path(run_dir) / RUN_INFO, json.dumps(asdict(info), indent=2).encode())


def read_run_info(run_dir: Path) -> RunInfo:
    return RunInfo.from_json(json.loads((Path(run_dir) / RUN_INFO).read_text()))
