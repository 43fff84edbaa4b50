"""Per-round checkpoint of the aggregator: the ServerEngine state (safetensors) plus the metrics rows so far.

Both files are replaced atomically (``atomic_write_bytes``) after every round, metrics first: a crash
between the two leaves ``metrics.jsonl`` one round ahead of the state, and resume trusts the state
(rows of rounds it has not reached are dropped and those rounds redone), so no completed round is lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from fedmekt.artifacts import METRICS, atomic_write_bytes
from fedmekt.errors import UserError
from fedmekt.wire.federation import config_key

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(out: Path, state: dict[str, np.ndarray], config: dict, rows: list[dict], run: str) -> None:
    blob = save({k: np.ascontiguousarray(v) for k, v in state.items()},
                metadata={"config": config_key(config), "run": run})
    # Metrics first, state second: a crash between the two leaves a metrics row one round ahead of the
    # state, which resume drops and redoes. The other order would lose that completed round's row.
    atomic_write_bytes(out / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    atomic_write_bytes(out / CHECKPOINT, blob)


def load_checkpoint(out: Path, config: dict) -> tuple[dict[str, np.ndarray], list[dict], str] | None:
    """(state, rows, run id) of the last completed round, or None when ``out`` has no checkpoint."""
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
    if meta.get("config") != config_key(config):
        raise UserError(f"checkpoint {path} belongs to a different configuration; use another --out")
    done = int(np.asarray(state["meta/rounds_completed"]).reshape(-1)[0])
    rows = []
    metrics = out / METRICS
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return state, [r for r in rows if r.get("round", -1) < done], meta.get("run", "")
