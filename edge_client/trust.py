"""The newest federation run a gateway trusts, kept on disk: runs older than it are refused after a restart too.

A gateway follows a signed federation manifest only if its run is not ordered before the run it
follows (fedmekt/wire/runs.py: the aggregator's persisted epoch, never a clock). In memory that
rule forgets everything at each restart, and a gateway restarted while an older run's signed
manifest is replayed would follow it and take its model. So the epoch of every signed manifest
followed is written to ``<state>/run-trust.json`` (``{"min_epoch": {federation: epoch}}``) and the
floor also starts from ``min_epoch`` when the gateway is told one (provisioning hands it over:
``fedmekt provision add --min-epoch``). Only signed manifests raise it: an unsigned one could be
forged to lock the gateway out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fedmekt.wire.codec import WireError
from fedmekt.wire.runs import MAX_EPOCH, run_epoch, run_order
from sensors.files import atomic_write_bytes

log = logging.getLogger("edge_client")
TRUST_FILE = "run-trust.json"


def _read(path: Path) -> dict[str, int]:
    """{federation: epoch} from ``path``; an unreadable file counts as empty (logged: the floor falls back)."""
    try:
        d = json.loads(path.read_text())
        floors = d["min_epoch"]
        if isinstance(floors, dict) and all(isinstance(k, str) and type(v) is int and 0 <= v <= MAX_EPOCH
                                            for k, v in floors.items()):
            return dict(floors)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.error("run trust file %s is unreadable: starting from the provisioned floor", path)
    return {}


class RunTrust:
    """The floor of run epochs ``federation`` may still use on this gateway (0: none yet)."""

    def __init__(self, state_dir: Path | None, federation: str, min_epoch: int = 0):
        self.path = None if state_dir is None else Path(state_dir) / TRUST_FILE
        self.federation = federation
        self._stored = _read(self.path).get(federation, 0) if self.path is not None else 0
        self.floor = max(self._stored, min_epoch)

    def check(self, run: str) -> None:
        """WireError when ``run`` is ordered before the floor (a replayed older run, or one of an aggregator
        that lost its run counter)."""
        if self.floor and run_order(run) < (2, self.floor):
            raise WireError(f"manifest of run {run or '(none)'} is older than epoch {self.floor}, the newest this "
                            f"gateway trusts")

    def follow(self, run: str) -> None:
        """A signed manifest of ``run`` is followed: raise the floor to its epoch, on disk first."""
        epoch = run_epoch(run)
        self.floor = max(self.floor, epoch)
        if self.path is not None and epoch > self._stored:  # also the provisioned floor, once a run confirms it
            floors = _read(self.path)
            floors[self.federation] = epoch
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps({"min_epoch": floors}, sort_keys=True).encode())
            self._stored = epoch
