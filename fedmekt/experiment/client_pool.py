"""Where ``reproduce``'s clients train: in this process, or spread over worker processes (one per core).

Each worker owns a fixed share of the clients (their private data, persistent model and optimizers), so a
round costs the busiest worker's share instead of the sum of all. Results are bit-identical to training
them here: a client's initial weights and random streams come from (seed, client id, round), never from
the process that runs it, and the uploads are handed back in the plan's order either way.

Workers are started with ``spawn`` (torch and ``fork`` don't mix) and talk over pipes of this machine only;
what crosses them is our own objects, never network input.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from multiprocessing.connection import Connection

from fedmekt import device_classes
from fedmekt.learn.algorithms.base import Tensors
from fedmekt.config import FederationConfig
from fedmekt.learn.engine import ClientEngine, RoundPlan
from sensors.partition import ClientPartition, Partition


class LocalClients:
    """Every client in this process (``workers = 1``)."""

    def __init__(self, cfg: FederationConfig, clients: list[ClientPartition], channels: dict[str, int],
                 proxy: Partition | None, classes: dict[str, str] | None = None) -> None:
        """``classes``: each client's device class (default: the fleet dealt over ``clients``)."""
        classes = classes or device_classes.assign(cfg.fleet, [c.client_id for c in clients])
        self.engines = {c.client_id: ClientEngine(cfg, c.client_id, c.modalities, channels, proxy, classes[c.client_id])
                        for c in clients}
        self.private = {c.client_id: c.data for c in clients}

    def train(self, plan: RoundPlan, views: dict[str, Tensors]) -> dict[str, Tensors]:
        """One round's uploads of the clients in ``views`` (their downstream views), in that order."""
        return {cid: self.engines[cid].train_round(plan, view, self.private[cid]) for cid, view in views.items()}

    def close(self) -> None:
        self.engines.clear()


class WorkerClients:
    """The clients spread round-robin (by sorted id) over ``workers`` processes."""

    def __init__(self, cfg: FederationConfig, clients: list[ClientPartition], channels: dict[str, int],
                 proxy: Partition | None, workers: int) -> None:
        ids = sorted(c.client_id for c in clients)
        classes = device_classes.assign(cfg.fleet, ids)  # dealt over every client, whichever worker trains it
        self.owner = {cid: i % workers for i, cid in enumerate(ids)}
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for w in range(workers):
            mine = [c for c in clients if self.owner[c.client_id] == w]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, cfg, mine, channels, proxy, classes), daemon=True,
                               name=f"fedmekt-clients-{w}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def train(self, plan: RoundPlan, views: dict[str, Tensors]) -> dict[str, Tensors]:
        """Each worker gets its share of the round in one message (so no pipe waits on the other), then all
        train at once; the uploads come back in ``views``' order."""
        shares: dict[int, dict[str, Tensors]] = {}
        for cid, view in views.items():
            shares.setdefault(self.owner[cid], {})[cid] = view
        for w, share in shares.items():
            self.conns[w].send((plan, share))
        done: dict[str, Tensors] = {}
        for w in shares:
            try:
                kind, value = self.conns[w].recv()
            except EOFError:
                raise RuntimeError(f"client worker {w} died (exit code {self.procs[w].exitcode})") from None
            if kind == "error":
                raise RuntimeError(f"client worker {w} failed:\n{value}")
            done.update(value)
        return {cid: done[cid] for cid in views}

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            conn.close()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def _serve(conn: Connection, cfg: FederationConfig, clients: list[ClientPartition], channels: dict[str, int],
           proxy: Partition | None, classes: dict[str, str]) -> None:
    """A worker's loop: (plan, {client: view}) in, ("ok", {client: upload}) or ("error", traceback) out."""
    local = LocalClients(cfg, clients, channels, proxy, classes)
    while (job := conn.recv()) is not None:
        try:
            conn.send(("ok", local.train(*job)))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", traceback.format_exc()))


def client_pool(cfg: FederationConfig, clients: list[ClientPartition], channels: dict[str, int],
                proxy: Partition | None, workers: int = 1) -> LocalClients | WorkerClients:
    """``workers`` > 1 (capped at the number of clients) trains them in that many processes."""
    workers = min(workers, len(clients))
    if workers <= 1:
        return LocalClients(cfg, clients, channels, proxy)
    return WorkerClients(cfg, clients, channels, proxy, workers)
