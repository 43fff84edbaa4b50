"""Sync answers: the protocol's state without retained messages.

A client's sync request (``clients/<id>/sync``, sent on every (re)connect) is answered on its ``reply/``
topics with what it lacks — the manifest, the proxy set, the open round's announcement (and global knowledge
when it owes an upload), the newest package (a mixed fleet's: of the device class the request names) —
rate-limited per client (aggregator/sync.py), so a broker without retained messages loses nothing.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aggregator.sync import SyncLimiter
from fedmekt import device_classes
from fedmekt.run_counter import epoch_file
from fedmekt.wire.codec import WireError
from fedmekt.wire.runs import run_order
from fedmekt.wire.sync import SyncRequest

if TYPE_CHECKING:
    from aggregator.service import Aggregator

log = logging.getLogger("aggregator")


class SyncAnswers:
    """Takes sync requests and answers them from the round driver's state (``host``: its open round, run,
    manifest, proxy set, control plane and packages)."""

    def __init__(self, host: Aggregator):
        self.host = host
        self.limiter = SyncLimiter(host.opts.sync_interval, host.opts.sync_bulk_interval)  # also counts requests
        self._bad_sync: set[str] = set()  # clients whose malformed sync request was logged (once each)
        self._newer_runs: set[str] = set()  # newer runs clients named in sync requests (logged once each)
        self._bad_class: set[str] = set()  # clients that named a device class we do not accept (logged once each)

    def on_sync(self, client_id: str, payload: bytes) -> None:
        known = self.host.opts.known_clients
        if known is not None and client_id not in known:
            return  # its status was warned about already
        try:
            request = SyncRequest.from_bytes(payload)
        except WireError as exc:
            if client_id not in self._bad_sync and len(self._bad_sync) < 4096:
                self._bad_sync.add(client_id)
                log.warning("ignoring sync request of %s: %s", client_id, exc.reason)
            return
        self.note_newer_run(client_id, request)
        self.limiter.add(client_id, request)

    def note_newer_run(self, client_id: str, request: SyncRequest) -> None:
        """A client follows a run ordered after ours: it will refuse this run. That happens when the run counter
        was lost (a new state folder): say once per run how to get past it."""
        host = self.host
        newer = request.run if request.model is None else max(request.run, request.model[0], key=run_order)
        if run_order(newer) <= run_order(host.run_id) or newer in self._newer_runs or len(self._newer_runs) >= 64:
            return
        self._newer_runs.add(newer)
        log.error("%s follows run %s, newer than this run %s: it refuses this run. The run counter %s was lost or "
                  "belongs to another aggregator; restart with --min-epoch above that run's epoch", client_id, newer,
                  host.run_id, epoch_file(host.state_dir, host.cfg.federation))

    def answer_due(self) -> None:
        host = self.host
        for client_id, request in self.limiter.due(time.monotonic()):
            answer = self.answer(client_id, request)
            if not answer:
                continue
            log.debug("sync answer to %s: %d messages", client_id, len(answer))
            try:
                host.link.publish_all((host.topics.reply(client_id, topic), payload) for topic, payload in answer)
            except TimeoutError:
                log.warning("sync answer to %s not acknowledged in time", client_id)

    def answer(self, client_id: str, req: SyncRequest) -> list[tuple[str, bytes]]:
        """What ``client_id`` lacks, as (federation topic, the payload published there); bulky parts rate-limited."""
        host = self.host
        t, control, now, out = host.topics, host.control, time.monotonic(), []
        this_run = req.run == host.run_id
        if not this_run:
            out.append((t.proxy_manifest, control.payload(t.proxy_manifest)))
        if req.liveness != host.presence.challenge:
            out.append((t.liveness, control.payload(t.liveness)))
        sha = host.manifest.proxy_sha256
        if req.trains and sha and req.proxy != sha and host.opts.publish_proxy \
                and self.limiter.bulk(client_id, sha, now):
            out += [(t.proxy_chunk(i), f) for i, f in enumerate(host.proxy_frames)]
        r = host._round
        if req.trains and r is not None:
            rnd = r.plan.round
            owed = client_id in r.plan.selected and client_id not in host._absorbed
            if owed and this_run and req.uploaded >= rnd:  # it uploaded, nothing arrived: the upload was lost
                out.append((t.resend, control.payload(t.rounds)))
            else:
                if owed or (req.round if this_run else -1) < rnd:
                    out.append((t.rounds, control.payload(t.rounds)))
                if owed:
                    out += [(t.global_chunk(rnd, i), f) for i, f in enumerate(r.global_frames)]
        namespace = self.package_namespace(client_id, req) if req.model is not None else None
        built = host.packages.newest().get(namespace) if namespace is not None else None
        if built is not None and req.model != (built.manifest.run, built.manifest.round) \
                and self.limiter.bulk(client_id, f"model-{namespace}-{built.manifest.round}", now):
            out += host.packages.messages(namespace)
        return out

    def package_namespace(self, client_id: str, req: SyncRequest) -> str | None:
        """Where the package ``client_id`` installs goes out: ``models/`` ("") in a fleet of one class, its class's
        ``models/<class>/`` in a mixed fleet; None for a class the federation does not accept (said once)."""
        cfg = self.host.cfg
        if req.device_class:
            why = device_classes.refusal(cfg.fleet, cfg.federation, req.device_class)
            if why is not None:
                if client_id not in self._bad_class and len(self._bad_class) < 4096:
                    self._bad_class.add(client_id)
                    log.warning("no model package for %s: %s", client_id, why)
                return None
        return req.device_class if len(cfg.device_classes) > 1 else ""
