"""The run counter: the epoch in every fresh run's id (fedmekt/wire/runs.py), issued by the aggregator.

Runs must be ordered without trusting a clock: a lab server whose clock is a day behind must still
start a run that gateways take for newer than the last one. So the aggregator keeps one counter
per federation in its state folder (``<state>/<federation>.epoch``, one decimal line) and raises it
before it starts a fresh run; a resumed run keeps its id. The new value is on disk (fsynced) before
any message names it, so a crash never reuses an epoch. The first run of a federation gets 1 (or
``at_least``): the state folder is what must survive, like the signing key; after losing it, start
with ``--min-epoch`` above the newest epoch the gateways follow (the aggregator logs it when a
gateway's sync request names a newer run than its own). Provisioning reads the same file to hand a
new device the federation's current epoch as its floor (``fedmekt provision add --aggregator-state``).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from fedmekt.errors import UserError
from fedmekt.wire.runs import MAX_EPOCH
from sensors.files import atomic_write_bytes


def epoch_file(state_dir: Path, federation: str) -> Path:
    return Path(state_dir) / f"{federation}.epoch"


def read_epoch(path: Path) -> int:
    """The last epoch issued (0 when none was); UserError when the file is not a counter."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise UserError(f"cannot read the run counter {path}: {exc}") from None
    value = text.strip()
    if not (value.isdigit() and len(value) <= 18):
        raise UserError(f"run counter {path} holds {value[:40]!r}, not a number: restore it, or remove it and "
                        f"start with --min-epoch above the newest epoch your gateways follow")
    return int(value)


def next_epoch(state_dir: Path, federation: str, at_least: int = 1) -> int:
    """Issue the next epoch of ``federation``: one above the last issued, and at least ``at_least``; persisted
    before it is returned (two aggregators sharing the folder never get the same one)."""
    state_dir = Path(state_dir)
    path = epoch_file(state_dir, federation)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(state_dir / f".{federation}.epoch.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            epoch = max(read_epoch(path) + 1, at_least)
            if epoch > MAX_EPOCH:
                raise UserError(f"run counter {path} is exhausted")
            atomic_write_bytes(path, f"{epoch}\n".encode())
    except OSError as exc:
        raise UserError(f"cannot write the run counter {path} ({exc.strerror}): give a writable --state-dir") from None
    return epoch
