"""Local training on the gateway: ClientEngine over the device's SampleStore, with a persistent state.

The model state (and the last upload, so a re-announced round after an aggregator restart is
answered without training twice) is written atomically after every round, once the upload is on its
way (``persist``: its two fsyncs stay off the round's critical path); a restarted client resumes from
it when the federation config is unchanged. A crash before that write costs only training the round
again from the previous state, to the same upload (the round's draws are seeded).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fedmekt.artifacts import atomic_write_bytes, tensor_bytes
from fedmekt import device_classes
from fedmekt.config import FederationConfig
from fedmekt.learn.engine import ClientEngine, RoundPlan, client_view
from fedmekt.wire.manifest import config_key
from sensors.partition import Normalizer, Partition
from sensors.store import SampleStore

log = logging.getLogger("edge_client")
STATE = "client_state.safetensors"
LAST_UPLOAD = "last_upload.safetensors"


class LocalTrainer:
    """Owns the client's engine; ``train`` reads from the store only the rows its round's crops take.

    The training is bounded by ``hyper.local_step_budget`` (crops drawn uniformly over the store) and the
    store is read through ``SampleStore.open_partition`` (the crops' rows, not the whole store), so a
    growing store makes neither the round longer nor its memory larger; the results are bit-identical to
    training on ``read_partition``'s whole arrays.
    """

    def __init__(self, cfg: FederationConfig, client_id: str, modalities: tuple[str, ...], channels: dict[str, int],
                 proxy: Partition | None, store: SampleStore, state_dir: Path, normalizer: Normalizer | None = None,
                 run: str = "", device_class: str | None = None):
        self.cfg, self.client_id, self.store, self.normalizer = cfg, client_id, store, normalizer
        self.modalities = tuple(m for m in cfg.pair if m in modalities)
        self._engine_args = (cfg, client_id, self.modalities, channels, proxy, device_class)
        self.engine = ClientEngine(*self._engine_args)
        self.device_class = self.engine.device_class
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # model state is derived from the private samples
        self.last_round = -1
        self._upload: dict[str, np.ndarray] | None = None  # the upload of last_round, while this process has it
        self._unsaved = False  # trained since the last persist()
        self._config_key = config_key(cfg.to_dict())
        self.run = run
        self._resume()

    def _resume(self) -> None:
        path = self.state_dir / STATE
        if not path.exists():
            return
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        if meta.get("config") != self._config_key or meta.get("client") != self.client_id \
                or meta.get("run", "") != self.run \
                or meta.get("device_class", device_classes.DEFAULT) != self.device_class:  # another width
            log.info("%s: saved state belongs to another federation run; starting afresh", self.client_id)
            return
        self.engine.load_state_dict(load_file(str(path)))
        self.last_round = int(meta["last_round"])
        log.info("%s: resumed local model after round %d", self.client_id, self.last_round + 1)

    def restart(self) -> None:
        """A fresh local model: the aggregator began the federation again from an earlier round."""
        self.engine = ClientEngine(*self._engine_args)
        self.last_round, self._upload, self._unsaved = -1, None, False

    def train(self, plan: RoundPlan, downstream: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One local round; returns the upload. Call :meth:`persist` once it is sent."""
        # raw device samples are z-scored with the federation's statistics as they are read
        normalise = None if self.normalizer is None else self.normalizer.apply
        with self.store.open_partition(self.modalities, transform=normalise) as private:
            upload = self.engine.train_round(plan, client_view(downstream, self.modalities), private)
        self.last_round, self._upload, self._unsaved = plan.round, upload, True
        return upload

    def persist(self) -> None:
        """Write the state and the upload of the round trained last (atomically, each fsynced)."""
        if not self._unsaved:
            return
        meta = {"config": self._config_key, "client": self.client_id, "run": self.run,
                "device_class": self.device_class, "last_round": str(self.last_round)}
        atomic_write_bytes(self.state_dir / STATE, tensor_bytes(self.engine.state_dict(), meta))
        atomic_write_bytes(self.state_dir / LAST_UPLOAD, tensor_bytes(self._upload, meta))
        self._unsaved = False

    def cached_upload(self, round_: int) -> dict[str, np.ndarray] | None:
        """The upload already computed for ``round_`` (asked for again, or re-announced after a restart)."""
        if round_ != self.last_round:
            return None
        if self._upload is not None:
            return self._upload
        path = self.state_dir / LAST_UPLOAD
        return load_file(str(path)) if path.exists() else None
