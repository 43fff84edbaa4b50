"""Signed model packages of the run (export/publisher.py): published every ``package_every`` rounds and at the
end, bound to this run; the newest (a mixed fleet's: of each device class) is kept so sync answers and a
reconnect can send it again.

Deriving a package's model takes long (the deployed model's fine-tuning, a mixed fleet's students: seconds on
the demo data, minutes on HAPT), so a package due before the last round does not stall the rounds: between two
rounds the round thread only snapshots the global model (fedmekt/learn/deployables.py ``GlobalState``) and queues
it; one worker thread derives and publishes the queued packages in round order, none skipped (a mixed fleet's
students warm-start from the previous package's: the same cadence gives the same packages however long each
took); each queued package holds one copy of the global model until it is out. The final package waits (bounded)
for the queue, then is derived and published on the round thread. When the link closes (the run's end, an error,
Ctrl-C) nothing queued goes out any more and the package being derived stops at its next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aggregator.fleet import ClassPackages, class_runs, package_publisher
from fedmekt.learn.deploy import Stopped
from fedmekt.learn.deployables import Deployables, GlobalState
from fedmekt.run_info import RunInfo

log = logging.getLogger("aggregator")
DRAIN_S = 3600.0   # the final package waits at most this long for the packages queued before it
DRAIN_LOG_S = 30.0  # while waiting, say so at most this often
CLOSE_S = 30.0      # close() waits at most this long for the worker to leave the package it derives


@dataclass(frozen=True)
class _Due:
    """A package due before the last round: the run's description and the snapshot it is derived from."""

    info: RunInfo
    state: GlobalState


class Packages:
    """The run's package publisher (None without a signing key), its worker thread and the newest package."""

    def __init__(self, federation: str, signing_key, enabled: bool, every: int, out: Path):
        self.federation, self.signing_key, self.enabled, self.every, self.out = \
            federation, signing_key, enabled, every, out
        self._publisher = None  # PackagePublisher or aggregator.fleet.ClassPackages when a signing key is given
        self._deployables: Deployables | None = None
        self._lock = threading.RLock()  # held while a package goes out and while the newest is read: all or nothing
        self._closed = False            # no package before the final one goes out any more (read under _lock)
        self._stopping = threading.Event()  # close(): the package being derived ends at its next step
        self._queue: queue.SimpleQueue[_Due | None] = queue.SimpleQueue()
        self._pending: list[int] = []   # rounds whose package is queued or being derived (under _idle)
        self._idle = threading.Condition()
        self._worker: threading.Thread | None = None

    def start(self, link, run_id: str, cfg, server) -> None:
        if self.signing_key is None or not self.enabled:
            return
        self._publisher = package_publisher(cfg, link, self.signing_key, self.out / "packages", self.every, run_id)
        self._deployables = server.deployables
        # a daemon: a run that ends by an error or Ctrl-C is never kept alive by a package still being derived
        self._worker = threading.Thread(target=self._work, name="packages", daemon=True)
        self._worker.start()

    def publish(self, server, final: bool) -> None:
        """Publish the global model as a signed package when due: one before the last round is queued for the
        worker (a snapshot: the next round may start at once), the final one is published before this returns. A
        failed export never stops the rounds, but a run whose final package cannot be published ends with that
        error: its gateways would keep an old model."""
        if self._publisher is None or not self._publisher.due(server.rounds_completed, final):
            return   # the deployed model is fine-tuned only for a package that goes out
        if not final:
            with self._idle:
                self._pending.append(server.rounds_completed)
            self._queue.put(_Due(server.run_info(), server.global_state().copy()))
            return
        self._drain()
        try:
            self._derive_and_publish(_Due(server.run_info(), server.global_state()), final=True)
        except Exception as exc:  # noqa: BLE001 - reported as the run's error below
            log.error("model package after round %d not published: %s", server.rounds_completed, exc)
            from fedmekt.errors import UserError

            raise UserError(f"the run's final model package was not published: {exc} (the checkpoint in "
                            f"{self.out} holds the model: `fedmekt export` builds it by hand)") from None

    def close(self) -> None:
        """No package before the final one goes out after this (the link is about to close); the worker ends, within
        one fine-tuning step: a thread still in torch code when the interpreter exits aborts the process."""
        self._stopping.set()
        self._closed = True
        self._queue.put(None)
        if self._worker is not None:   # it may be publishing a package: that one goes out whole
            self._worker.join(CLOSE_S)
            if self._worker.is_alive():
                log.warning("the model package worker did not end within %.0f s", CLOSE_S)

    def newest(self) -> dict:
        """The newest package published (export.build.BuiltPackage) by namespace: "" for a fleet of one class (it
        goes out under ``models/``), each class for a mixed fleet (``models/<class>/``); empty before the first."""
        with self._lock:
            return {} if self._publisher is None else self._publisher.newest()

    def messages(self, namespace: str | None = None) -> list[tuple[str, bytes]]:
        """The retained messages of the newest package under ``namespace`` (None: of every namespace)."""
        from export.package import verify_package
        from export.push import package_messages

        with self._lock:   # read whole: a newer package removes the older one's files once it is out
            return [m for ns, built in self.newest().items() if namespace is None or ns == namespace
                    for m in package_messages(self.federation, verify_package(built.path, None), ns)[1]]

    # -- the worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        """Derive and publish the queued packages in order until :meth:`close`; a failed one is logged."""
        while (due := self._queue.get()) is not None:
            try:
                if not self._closed:
                    self._derive_and_publish(due, final=False)
            except Stopped:
                pass   # close(): nothing more goes out
            except Exception as exc:  # noqa: BLE001 - the federation goes on; clients keep the model in service
                log.error("model package after round %d not published: %s", due.state.rounds_completed, exc)
            finally:
                with self._idle:
                    self._pending.remove(due.state.rounds_completed)
                    self._idle.notify_all()

    def _derive_and_publish(self, due: _Due, final: bool) -> None:
        """Derive the package's models from ``due.state`` (long; no lock held), then publish them under the lock."""
        from export.run_model import RunModel

        d, rnd = self._deployables, due.state.rounds_completed
        stop = None if final else self._stopping.is_set
        runs = (class_runs(due.info, d.class_models(due.state, stop)) if isinstance(self._publisher, ClassPackages)
                else RunModel.of(due.info, d.deployed(due.state, stop)))
        with self._lock:
            if self._closed and not final:
                return
            self._publisher.maybe_publish(runs, rnd, final=final)

    def _drain(self) -> None:
        """Wait for the packages queued before the final one (at most ``DRAIN_S``, saying what it waits for); past
        that, they never go out (the final package would be followed by an older one)."""
        deadline = time.monotonic() + DRAIN_S
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._closed = True
                    log.warning("gave up after %.0f s waiting for the model packages after rounds %s: the final "
                                "package goes out without them", DRAIN_S, ", ".join(map(str, self._pending)))
                    return
                log.info("waiting for the model package%s after round%s %s before the final one",
                         *("s", "s") if len(self._pending) > 1 else ("", ""), ", ".join(map(str, self._pending)))
                self._idle.wait(min(left, DRAIN_LOG_S))
