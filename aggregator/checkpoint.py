"""Per-round checkpoint of the aggregator: the ServerEngine state (safetensors) plus the metrics rows so far.

Both files are replaced atomically (``atomic_write_bytes``) after every round, state first: a crash
between the two leaves a checkpoint one round ahead of ``metrics.jsonl``, and resume trusts the state
(rows of rounds it has not reached are dropped, missing ones are simply not reported twice).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from fedmekt.artifacts import METRICS, atomic_write_bytes
from fedmekt.errors import UserError

CHECKPOINT = "checkpoint.safetensors"


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def save_checkpoint(out: Path, state: dict[str, np.ndarray], config: dict, rows: list[dict]) -> None:
    blob = save({k: np.ascontiguousarray(v) for k, v in state.items()}, metadata={"config": _config_key(config)})
    atomic_write_bytes(out / CHECKPOINT, blob)
    atomic_write_bytes(out / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def load_checkpoint(out: Path, config: dict) -> tuple[dict[str, np.ndarray], list[dict]] | None:
    """(state, rows) of the last completed round, or None when ``out`` has no checkpoint."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}); move it away to start afresh") from None
    if meta.get("config") != _config_key(config):
        raise UserError(f"checkpoint {path} belongs to a different configuration; use another --out")
    done = int(np.asarray(state["meta/rounds_completed"]).reshape(-1)[0])
    rows = []
    metrics = out / METRICS
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return state, [r for r in rows if r.get("round", -1) < done]
