"""The aggregator: drives ServerEngine rounds over MQTT.

Per round: plan among the selectable clients (seeded): online, with a live birth, heartbeat or upload
within ``liveness`` seconds (a retained "online" alone proves nothing) and, when the federation has a
client list, provisioned; with none left (every gateway restarting) it waits for them. Then publish
the global knowledge (``global/<round>/<chunk>``) and then the retained announcement (``rounds``, with a
message expiry = the round deadline), fold each valid upload into the engine's
streaming mean the moment its last chunk arrives, close the round at the quorum or
the deadline, finish it (server update, classifier, evaluation), append the metrics
row, checkpoint, publish the row on ``metrics``. Late, duplicate, unselected or
invalid uploads are discarded with one log line each, and so is an upload still missing
chunks when its round closes; nothing undecoded reaches the engine. With a signing key it
also publishes a signed model package every ``package_every`` rounds and at the end
(export/publisher.py), bound to this run, and signs the control plane: the manifest, every
announcement (with the round's nonce and the hash of its global knowledge) and "done"; an upload
whose header does not echo the round's nonce is discarded. It watches its retained manifest,
proxy chunks and announcement and puts its own back when another publisher replaces them (clients refuse the
forgery, but one that starts later would find nothing else), and after every reconnect it publishes all of
them and its newest package again (what was put there while it was away arrives flagged retained, like its
own). No wall clock is read: a fresh run's id carries the next epoch of the run counter in the state folder
(fedmekt/run_counter.py), the announcement carries the round's timeout as a duration, and the round closes
on this process's monotonic clock.
Retained messages are an optimisation: a client's sync request (``clients/<id>/sync``, sent on
every (re)connect) is answered on its ``reply/`` topics with what it lacks — the manifest, the proxy
set, the open round's announcement (and global knowledge when it owes an upload), the newest
package — rate-limited per client (aggregator/sync.py), so a broker without retained messages
loses nothing.
Memory: one reassembly buffer bounded by ``max_pending`` messages plus the engine's
per-key running sums, independent of the number of clients.
"""

from __future__ import annotations

import json
import logging
from collections import deque
import math
import threading
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from aggregator.checkpoint import CheckpointWriter, load_checkpoint
from aggregator.fleet import class_refused, package_publisher
from aggregator.sync import SyncLimiter
from fedmekt.experiment.accounting import message_bytes
from fedmekt.concurrency import TORCH_RNG_LOCK
from fedmekt.config import FederationConfig
from fedmekt.learn.engine import RoundPlan, ServerEngine, client_view
from fedmekt.experiment.in_process import RunResult, final_record, run_name, run_record
from fedmekt.transport.mqtt import LinkOptions, Message, MqttLink
from fedmekt.run_counter import epoch_file, next_epoch
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import WireError, WireLimits, check_spec, decode_body, encode, parse_frame
from fedmekt.wire.runs import new_run_id, run_order
from fedmekt.wire.signing import sign
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics
from sensors.partition import FederatedSplit

log = logging.getLogger("aggregator")
WAIT_LOG_S = 5.0  # while waiting for clients, say so at most this often


@dataclass
class AggregatorOptions:
    """How the aggregator waits, limits and records (the learning itself is in FederationConfig)."""

    out: Path
    wait_clients: int = 0  # clients that must be online before round 0 (0 = per_round)
    wait_timeout: float = 600.0
    min_clients: int = 1  # a later round opens once this many are online (or wait_timeout passed)
    round_timeout: float = 600.0  # deadline per round, seconds after the announcement
    quorum: float = 1.0  # fraction of the selected clients whose uploads close a round early
    limits: WireLimits = field(default_factory=WireLimits)
    max_pending: int = 64  # incomplete upload messages held at once
    progress: bool = True
    name: str | None = None  # run name in the report (default <algorithm>-seed<seed>)
    publish_proxy: bool = True  # False when every client is provisioned with the bundle
    signing_key: object | None = None  # Ed25519PrivateKey: sign the control plane and model packages (None = never)
    packages: bool = True  # with a signing key, also publish model packages (simulate signs the control plane only)
    package_every: int = 10  # rounds between packages (0 = only at the end); the end always publishes
    known_clients: frozenset[str] | None = None  # the federation's provisioned client ids (None = any id)
    liveness: float = 120.0  # seconds a live birth, heartbeat or upload keeps a client selectable
    sync_interval: float = 3.0  # a client's sync requests are answered at most this often
    sync_bulk_interval: float = 30.0  # the proxy set or a package goes to one client at most this often
    resend_after: float = 10.0  # s without an upload frame before owed clients are asked again (doubling; 0 = never)
    state_dir: Path | None = None  # where the run counter survives runs (fedmekt/run_counter.py); None = out's parent
    min_epoch: int = 1  # a fresh run's epoch is at least this (after losing the state folder)


@dataclass
class _Round:
    plan: RoundPlan
    deadline: float  # time.monotonic() when the round closes, quorum or not
    need: int
    reassembler: Reassembler
    bytes_up: int = 0
    rejected: int = 0
    late: int = 0
    nonce: str = ""  # the announcement's nonce every upload header must echo
    global_frames: list = field(default_factory=list)  # the round's global knowledge (sync answers resend it)
    frame_bytes: dict = field(default_factory=dict)  # payload bytes per message key, counted when absorbed
    quiet_since: float = field(default_factory=time.monotonic)  # the last upload frame (or request to re-send)
    resend_wait: float = 0.0  # quiet seconds before the next request to re-send


class Aggregator:
    """One federation's server process. ``run()`` returns the same RunResult as the in-process runner."""

    def __init__(self, cfg: FederationConfig, split: FederatedSplit, url: str, options: AggregatorOptions,
                 link_options: LinkOptions | None = None, rate_hz: float | None = None):
        self.cfg, self.split, self.url, self.opts = cfg, split, url, options
        self.topics = Topics(cfg.federation)
        self.link_options = link_options or LinkOptions(client_id=f"{cfg.federation}-aggregator")
        self.rate_hz = split.manifest.get("rate_hz", 0.0) if rate_hz is None else rate_hz  # for run.json
        self.online: dict[str, tuple[str, ...]] = {}
        self._live: dict[str, float] = {}  # monotonic time a client last proved it is alive (not a retained status)
        self.discarded: list[str] = []  # one line per discarded upload (also logged)
        self._unknown: set[str] = set()  # status ids outside known_clients, warned about once
        self._refused_classes: set[str] = set()  # clients of a device class not accepted, warned about once
        self._round: _Round | None = None
        self._absorbed: set[str] = set()
        self.server: ServerEngine | None = None
        self.run_id = ""  # set by run(): new for a fresh start, kept from the checkpoint on resume
        self.published = threading.Event()  # set once the manifest and proxy set are on the broker
        self.before_round = None  # optional callable(round, aggregator) run before planning each round (tests)
        self._packages = None  # export.publisher.PackagePublisher when a signing key is given
        self._control: dict[str, tuple[bytes, float | None]] = {}  # topic -> (our payload, monotonic expiry)
        self._sent: dict[str, deque[bytes]] = {}  # our recent payloads per control topic (their echoes are ours)
        self._restored: dict[str, float] = {}  # topic -> monotonic time we last put our message back
        self.sync_limiter = SyncLimiter(options.sync_interval, options.sync_bulk_interval)  # also counts requests
        self._bad_sync: set[str] = set()  # clients whose malformed sync request was logged (once each)
        self._package = None  # export.build.BuiltPackage: the newest package published (sync answers resend it)
        self._births = 0  # the link's connects already handled (a reconnect mid-round asks for lost uploads)
        self._newer_runs: set[str] = set()  # newer runs clients named in sync requests (logged once each)
        self._foreign_seen: set[str] = set()  # other federations whose messages reached us (warned once each)

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg, opts = self.cfg, self.opts
        opts.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with TORCH_RNG_LOCK:
            self.server = server = ServerEngine(cfg, self.split.channels, self.split.label_names, self.split.proxy,
                                                self.split.labelled, self.split.test,
                                                normalizer=self.split.normalizer, rate_hz=self.rate_hz)
        rows: list[dict] = []
        resumed = load_checkpoint(opts.out, cfg.to_dict())
        if resumed is not None:
            server.load_state_dict(resumed[0])
            rows, self.run_id = resumed[1], resumed[2]
            log.info("resuming from checkpoint: %d of %d rounds done", server.rounds_completed, cfg.rounds)
        if not self.run_id:  # a fresh run (or a checkpoint from before run ids): the next epoch
            self.run_id = new_run_id(next_epoch(self.state_dir, cfg.federation, opts.min_epoch))
        name = opts.name or run_name(cfg)
        base = run_record(cfg, name)
        with MqttLink(self.url, self.link_options, subscriptions=[
                self.topics.status_all, self.topics.uploads_all, self.topics.proxy_all,
                self.topics.rounds, self.topics.sync_all]).connect() as link:
            self.link = link
            log.info("federation %s on broker %s (run %s)", cfg.federation, ", ".join(map(str, link.addresses)),
                     self.run_id)
            self._publish_federation()
            self._packages = self._package_publisher()
            self.wait_for_clients(opts.wait_clients or cfg.per_round, opts.wait_timeout)
            bar = tqdm(range(server.rounds_completed, cfg.rounds), desc=name, disable=not opts.progress,
                       unit="round", leave=False)
            checkpoints = CheckpointWriter(opts.out)  # the metrics row goes out once its round is on disk
            for rnd in bar:
                if self.before_round is not None:
                    self.before_round(rnd, self)
                row = self._one_round(rnd)
                rows.append({**base, **row})
                payload = json.dumps(rows[-1], default=float).encode()
                checkpoints.submit(server.state_dict(), cfg.to_dict(), list(rows), self.run_id,
                                   lambda payload=payload: link.publish(self.topics.metrics, payload, retain=True))
                self._publish_package(final=False)
                bar.set_postfix({f"f1_{m}": f"{row.get(f'f1_paper_{m}', float('nan')):.3f}" for m in cfg.pair})
            checkpoints.flush()
            if self.sync_limiter.requests:
                log.info("sync requests: %d taken, %d answered", self.sync_limiter.requests, self.sync_limiter.answers)
            self._publish_package(final=True)
            self._publish_control(self.topics.rounds, fedwire.Announcement(
                cfg.federation, None, 0.0, done=True, rounds=cfg.rounds, run=self.run_id).to_bytes())
        final = final_record(cfg, base, server.proxy_delivery, self._proxy_bytes * len(self.online),
                             self._final_evaluation(), time.perf_counter() - start)
        state = {k: v for k, v in server.state_dict().items() if k.startswith(("autoencoder.", "head."))}
        return RunResult(name, cfg, rows, final, state, server.run_info())

    @property
    def state_dir(self) -> Path:
        """Where the run counter lives: it must outlive run folders (a fresh run often gets a fresh --out)."""
        return self.opts.state_dir if self.opts.state_dir is not None else self.opts.out.resolve().parent

    def _final_evaluation(self) -> dict:
        with TORCH_RNG_LOCK:
            return self.server.final_evaluation()

    def _publish_federation(self) -> None:
        """Retained manifest and (once) the proxy set: a client arriving at any time finds them."""
        manifest, frames = fedwire.build(self.cfg, self.split, self.opts.limits, run=self.run_id)
        items = [(self.topics.proxy_chunk(i), f) for i, f in enumerate(frames)] if self.opts.publish_proxy else []
        self._proxy_bytes = sum(len(f) for f in frames) if self.opts.publish_proxy else 0
        # clear a stale announcement (e.g. "done" of the run being extended) before the new manifest
        self.link.publish_all([(self.topics.rounds, b"")], retain=True)
        self.link.publish_all(items, retain=True)
        for topic, frame in items:  # bound to the signed manifest by its hash: guarded, not signed
            self._remember(topic, frame)
        self._publish_control(self.topics.proxy_manifest, manifest.to_bytes())
        self.manifest, self.proxy_frames = manifest, frames
        self.published.set()

    def _package_publisher(self):
        if self.opts.signing_key is None or not self.opts.packages:
            return None
        return package_publisher(self.cfg, self.server, self.link, self.opts.signing_key, self.opts.out / "packages",
                                 self.opts.package_every, self.run_id)

    def _publish_control(self, topic: str, payload: bytes, expiry: int | None = None) -> None:
        """A retained control message, signed when a signing key is configured."""
        signed = sign(self.opts.signing_key, topic, payload)
        self._remember(topic, signed, expiry)
        self.link.publish_all([(topic, signed)], retain=True, expiry=expiry)

    def _remember(self, topic: str, payload: bytes, expiry: int | None = None) -> None:
        """Our retained message on ``topic``, restored if someone replaces it (:meth:`_guard_control`)."""
        self._sent.setdefault(topic, deque(maxlen=8)).append(payload)
        self._control[topic] = (payload, None if expiry is None else time.monotonic() + expiry)

    def _guard_control(self, topic: str, payload: bytes) -> None:
        """Another publisher replaced one of our retained control messages or proxy chunks: put ours back, at
        most every 2 s per topic (clients refuse the forgery, but one that starts later would find nothing else)."""
        ours, expires = self._control[topic]
        if payload in self._sent[topic] or time.monotonic() - self._restored.get(topic, -math.inf) < 2.0 \
                or (topic == self.topics.rounds and self._round is None):  # between rounds ours is stale too
            return
        left = None if expires is None else int(expires - time.monotonic())
        if left is not None and left < 1:
            return
        log.warning("retained %s was replaced by another publisher; restoring ours", topic)
        self._restored[topic] = time.monotonic()
        self.link.publish_all([(topic, ours)], retain=True, expiry=left)

    def _publish_package(self, final: bool) -> None:
        """Publish the global model as a signed package when due. A failed export never stops the rounds, but a
        run whose final package cannot be published ends with that error: its gateways would keep an old model."""
        if self._packages is None:
            return
        from export.run_model import RunModel

        server = self.server
        try:
            with TORCH_RNG_LOCK:
                built = self._packages.maybe_publish(RunModel(server.run_info(), server.model, server.head),
                                                     server.rounds_completed, final=final)
            self._package = built or self._package
        except Exception as exc:  # noqa: BLE001 - the federation goes on; clients keep the model in service
            log.error("model package after round %d not published: %s", server.rounds_completed, exc)
            if final:
                from fedmekt.errors import UserError

                raise UserError(f"the run's final model package was not published: {exc} (the checkpoint in "
                                f"{self.opts.out} holds the model: `fedmekt export` builds it by hand)") from None

    def wait_for_clients(self, want: int, timeout: float) -> None:
        """Process presence messages until ``want`` clients are online or ``timeout`` seconds passed."""
        self._wait_selectable(want, time.monotonic() + timeout)
        if not self.selectable():
            from fedmekt.errors import UserError

            raise UserError(f"no client came online within {timeout:.0f} s")
        if len(self.selectable()) < want:
            log.warning("going on with %d of %d expected clients online", len(self.selectable()), want)

    def selectable(self) -> list[str]:
        """Online clients whose liveness is current: a retained "online" alone (a phantom, or a client
        that died without its Will reaching us) is not enough; it takes a live birth, heartbeat or upload."""
        now = time.monotonic()
        return sorted(c for c in self.online if now - self._live.get(c, -math.inf) <= self.opts.liveness)

    def _await_clients(self, rnd: int) -> None:
        """Every client gone mid-run (a site power cut: all gateways restarting at once): wait, as before
        round 0, for ``wait_clients`` of them up to ``wait_timeout`` (again while none is back; never fail),
        not just for the first one back, or a gateway slower to restart (``import torch`` alone takes seconds
        on a Pi) would sit out the next rounds. Fewer than ``min_clients`` online (a broker node lost, its
        clients failing over): wait for them up to ``wait_timeout``, then go on with those there."""
        want = self.opts.wait_clients or self.cfg.per_round
        while not self.selectable():
            log.warning("no client is online before round %d: waiting up to %.0f s for %d clients", rnd + 1,
                        self.opts.wait_timeout, want)
            self._wait_selectable(want, time.monotonic() + self.opts.wait_timeout)
        least = self.opts.min_clients
        if len(self.selectable()) < least:
            log.info("%d of %d clients online before round %d: waiting up to %.0f s for the rest",
                     len(self.selectable()), least, rnd + 1, self.opts.wait_timeout)
            self._wait_selectable(least, time.monotonic() + self.opts.wait_timeout)

    def _wait_selectable(self, want: int, deadline: float) -> None:
        """Process messages until ``want`` clients are selectable or ``deadline``; says so whenever the count
        changes, and every few seconds."""
        said, told = -math.inf, -1
        while (have := len(self.selectable())) < want and time.monotonic() < deadline:
            if have != told or time.monotonic() - said >= WAIT_LOG_S:
                log.info("waiting for %d clients (%d online)", want, have)
                said, told = time.monotonic(), have
            self._pump(min(deadline, time.monotonic() + 0.2))

    def _one_round(self, rnd: int) -> dict:
        cfg, server = self.cfg, self.server
        t0 = time.perf_counter()
        self._await_clients(rnd)
        plan = server.plan_round(rnd, self.selectable())
        shown = ", ".join(plan.selected[:6]) + (", …" if len(plan.selected) > 6 else "")
        log.info("round %d of %d opens: %d clients selected (%s)", rnd + 1, cfg.rounds, len(plan.selected), shown)
        down = server.downstream(plan)
        frames = encode(down, cfg.wire_dtype, federation=cfg.federation, round_=rnd, sender=fedwire.AGGREGATOR_ID,
                        kind="global", limits=self.opts.limits)
        self.link.publish_all((self.topics.global_chunk(rnd, i), f) for i, f in enumerate(frames))
        server.begin_round(plan)
        self._absorbed = set()
        need = max(1, math.ceil(self.opts.quorum * len(plan.selected)))
        nonce = secrets.token_hex(8)
        deadline = time.monotonic() + self.opts.round_timeout  # our own clock; clients count the timeout on theirs
        self._round = _Round(plan, deadline, need, Reassembler(self.opts.limits, self.opts.max_pending), nonce=nonce,
                             global_frames=frames, resend_wait=self.opts.resend_after)
        self._publish_control(self.topics.rounds, fedwire.Announcement(
            cfg.federation, plan.to_json(), self.opts.round_timeout, run=self.run_id, nonce=nonce,
            global_sha256=parse_frame(frames[0], self.opts.limits)[0].sha256).to_bytes(),
            expiry=int(self.opts.round_timeout) + 1)
        while not self._round_complete() and time.monotonic() < deadline:
            self._pump(min(time.monotonic() + 0.5, deadline))
            self._ask_if_quiet()
        if len(self._absorbed) < len(plan.selected):
            log.warning("round %d of %d closes with %d of %d uploads", rnd + 1, cfg.rounds, len(self._absorbed),
                        len(plan.selected))
        r = self._round
        for sender, have, count in r.reassembler.forget_round(rnd):
            self._discard(f"{sender} round {rnd + 1}: incomplete upload ({have} of {count} chunks) when the round closed")
        row = server.finish_round(plan)
        bytes_down = sum(message_bytes(client_view(down, self.online.get(c, ())), cfg.wire_dtype, kind="global")
                         for c in plan.selected)
        self._round = None
        f1 = " ".join(f"f1 {m} {row[f'f1_paper_{m}']:.3f}" for m in cfg.pair if f"f1_paper_{m}" in row)
        log.info("round %d of %d closed: %d of %d uploads, %.2f s%s", rnd + 1, cfg.rounds, len(self._absorbed),
                 len(plan.selected),
                 time.perf_counter() - t0, f", {f1}" if f1 else "")
        return {**row, "bytes_down": bytes_down, "bytes_up": r.bytes_up, "bytes_global": sum(len(f) for f in frames),
                "proxy_windows": len(plan.proxy_windows), "wall_s": round(time.perf_counter() - t0, 4),
                "rejected": r.rejected, "late": r.late}

    # -- message handling ---------------------------------------------------------------------
    def _pump(self, until: float) -> None:
        while True:
            left = min(until, self.sync_limiter.next_due()) - time.monotonic()
            msg = self.link.get(timeout=max(0.0, left))
            if msg is not None:
                self._dispatch(msg)
            self._after_reconnect()
            self._answer_syncs()
            if time.monotonic() >= until or (self._round and self._round_complete()):
                return

    def _round_complete(self) -> bool:
        """Quorum reached, or every selected client that could still upload has (the rest went offline)."""
        r = self._round
        could = sum(1 for c in r.plan.selected if c in self.online or c in self._absorbed)
        return len(self._absorbed) >= min(r.need, could)

    def _dispatch(self, msg: Message) -> None:
        if msg.topic in self._control and not msg.retain:  # live: published while we run (retained = older)
            self._guard_control(msg.topic, msg.payload)
            return
        if not msg.topic.startswith(self.topics.prefix + "/"):
            self._foreign(msg.topic)
            return
        parts = msg.topic.split("/")
        prefix = len(self.topics.prefix.split("/"))
        if len(parts) == prefix + 3 and parts[prefix] == "clients" and parts[-1] == "status":
            self._on_status(parts[prefix + 1], msg.payload, msg.retain)
        elif len(parts) == prefix + 3 and parts[prefix] == "clients" and parts[-1] == "sync":
            self._on_sync(parts[prefix + 1], msg.payload)
        elif len(parts) == prefix + 5 and parts[prefix] == "clients" and parts[prefix + 2] == "upload":
            self._on_upload(parts[prefix + 1], parts[prefix + 3], msg.payload)

    def _foreign(self, topic: str) -> None:
        """A message of another federation: a saved session of this login still subscribes to its topics (one
        aggregator login served several federations). Never taken as ours; said once per federation."""
        other = topic.split("/")[1] if topic.count("/") >= 1 else topic
        if other not in self._foreign_seen and len(self._foreign_seen) < 64:
            self._foreign_seen.add(other)
            log.warning("ignoring messages of federation %r on this login's session: give each federation its own "
                        "aggregator login (fedmekt provision add … --role aggregator --federation F)", other[:64])

    def _on_status(self, client_id: str, payload: bytes, retained: bool = False) -> None:
        if not payload:  # a cleared retained status
            self.online.pop(client_id, None)
            return
        known = self.opts.known_clients
        if known is not None and client_id not in known:
            if client_id not in self._unknown:
                self._unknown.add(client_id)
                log.warning("ignoring status of %s: not a provisioned client of %s", client_id, self.cfg.federation)
            return
        try:
            status = fedwire.Status.from_bytes(payload)
        except WireError as exc:
            log.warning("ignoring status of %s: %s", client_id, exc.reason)
            return
        if class_refused(self.cfg, client_id, status, self._refused_classes):
            self.online.pop(client_id, None)
            return
        mods = tuple(m for m in self.cfg.pair if m in status.modalities)
        if status.state == "online" and mods and set(status.modalities) <= set(self.cfg.pair):
            if client_id not in self.online:
                log.debug("%s online with %s", client_id, mods)
            self.online[client_id] = mods
            if not retained:
                self._live[client_id] = time.monotonic()
        else:
            if status.state == "online" and status.modalities:  # none: an inference-only gateway, never trained
                log.warning("ignoring %s: modalities %s do not fit the pair %s", client_id, status.modalities,
                            self.cfg.pair)
            self.online.pop(client_id, None)

    # -- sync requests: the protocol's state without retained messages ---------------------------
    def _on_sync(self, client_id: str, payload: bytes) -> None:
        known = self.opts.known_clients
        if known is not None and client_id not in known:
            return  # its status was warned about already
        try:
            request = SyncRequest.from_bytes(payload)
        except WireError as exc:
            if client_id not in self._bad_sync and len(self._bad_sync) < 4096:
                self._bad_sync.add(client_id)
                log.warning("ignoring sync request of %s: %s", client_id, exc.reason)
            return
        self._note_newer_run(client_id, request)
        self.sync_limiter.add(client_id, request)

    def _note_newer_run(self, client_id: str, request: SyncRequest) -> None:
        """A client follows a run ordered after ours: it will refuse this run. That happens when the run counter
        was lost (a new state folder): say once per run how to get past it."""
        newer = request.run if request.model is None else max(request.run, request.model[0], key=run_order)
        if run_order(newer) <= run_order(self.run_id) or newer in self._newer_runs or len(self._newer_runs) >= 64:
            return
        self._newer_runs.add(newer)
        log.error("%s follows run %s, newer than this run %s: it refuses this run. The run counter %s was lost or "
                  "belongs to another aggregator; restart with --min-epoch above that run's epoch", client_id, newer,
                  self.run_id, epoch_file(self.state_dir, self.cfg.federation))

    def _after_reconnect(self) -> None:
        """Back on the broker after any disconnect (a network cut, or another connection that took over our
        session): whatever replaced our retained messages meanwhile (a replayed older run's manifest or
        package, say) came back flagged retained, which we never take for a forgery; so put all of ours back.
        Uploads published while we were away reached nobody: ask every selected client we lack one from."""
        births, self._births = self._births, self.link.births
        if births in (0, self._births):
            return
        self._reassert_retained()
        r = self._round
        if r is not None:
            self._ask_resend([c for c in r.plan.selected if c not in self._absorbed], "reconnected to the broker")

    def _reassert_retained(self) -> None:
        """Publish again, retained, every control message and proxy chunk we hold and the newest package."""
        now, lasting, expiring = time.monotonic(), [], []
        for topic, (payload, expires) in self._control.items():
            if topic == self.topics.rounds and self._round is None and expires is not None:
                continue  # a closed round's announcement: stale between rounds
            if expires is None:
                lasting.append((topic, payload))
            elif expires - now >= 1:
                expiring.append((topic, payload, int(expires - now)))
        if self._package is not None:
            from export.package import verify_package
            from export.push import package_messages

            lasting += package_messages(self.cfg.federation, verify_package(self._package.path, None))[1]
        log.info("reconnected to the broker: re-asserting %d retained messages", len(lasting) + len(expiring))
        try:
            self.link.publish_all(lasting, retain=True)
            for topic, payload, left in expiring:
                self.link.publish_all([(topic, payload)], retain=True, expiry=left)
        except TimeoutError:
            log.warning("re-asserted retained messages not acknowledged in time")

    def _ask_if_quiet(self) -> None:
        """A round with no upload frame for ``resend_after`` s (doubling) asks its online owed clients again:
        an upload the broker lost (a cluster moving its leaders, say) is sent again instead of the round
        waiting out its deadline without it."""
        r, now = self._round, time.monotonic()
        quiet = now - r.quiet_since
        if not r.resend_wait or quiet < r.resend_wait:
            return
        r.quiet_since, r.resend_wait = now, 2 * r.resend_wait
        owed = [c for c in r.plan.selected if c not in self._absorbed and c in self.online]
        if owed:
            self._ask_resend(owed, f"no upload for {quiet:.0f} s")

    def _ask_resend(self, owed: list[str], why: str) -> None:
        """The round's signed announcement on each owed client's ``reply/resend``: one that uploaded already
        sends its stored upload again, one still training goes on (edge_client/agent.py)."""
        rnd = self._round.plan.round
        log.info("round %d of %d: %s; asking %d clients for their uploads", rnd + 1, self.cfg.rounds, why, len(owed))
        announcement = self._control[self.topics.rounds][0]
        try:
            self.link.publish_all((self.topics.reply(c, self.topics.resend), announcement) for c in owed)
        except TimeoutError:
            log.warning("request for the uploads of round %d not acknowledged in time", rnd + 1)

    def _answer_syncs(self) -> None:
        for client_id, request in self.sync_limiter.due(time.monotonic()):
            answer = self._sync_answer(client_id, request)
            if not answer:
                continue
            log.debug("sync answer to %s: %d messages", client_id, len(answer))
            try:
                self.link.publish_all((self.topics.reply(client_id, topic), payload) for topic, payload in answer)
            except TimeoutError:
                log.warning("sync answer to %s not acknowledged in time", client_id)

    def _sync_answer(self, client_id: str, req: SyncRequest) -> list[tuple[str, bytes]]:
        """What ``client_id`` lacks, as (federation topic, the payload published there); bulky parts rate-limited."""
        t, now, out = self.topics, time.monotonic(), []
        this_run = req.run == self.run_id
        if not this_run:
            out.append((t.proxy_manifest, self._control[t.proxy_manifest][0]))
        sha = self.manifest.proxy_sha256
        if req.trains and sha and req.proxy != sha and self.opts.publish_proxy \
                and self.sync_limiter.bulk(client_id, sha, now):
            out += [(t.proxy_chunk(i), f) for i, f in enumerate(self.proxy_frames)]
        r = self._round
        if req.trains and r is not None:
            rnd = r.plan.round
            owed = client_id in r.plan.selected and client_id not in self._absorbed
            if owed and this_run and req.uploaded >= rnd:  # it uploaded, nothing arrived: the upload was lost
                out.append((t.resend, self._control[t.rounds][0]))
            else:
                if owed or (req.round if this_run else -1) < rnd:
                    out.append((t.rounds, self._control[t.rounds][0]))
                if owed:
                    out += [(t.global_chunk(rnd, i), f) for i, f in enumerate(r.global_frames)]
        built = self._package
        if req.model is not None and built is not None and req.model != (built.manifest.run, built.manifest.round) \
                and self.sync_limiter.bulk(client_id, f"model-{built.manifest.round}", now):
            from export.package import verify_package
            from export.push import package_messages

            out += package_messages(self.cfg.federation, verify_package(built.path, None))[1]
        return out

    def _discard(self, why: str) -> None:
        log.warning("discarded upload: %s", why)
        self.discarded.append(why)

    def _on_upload(self, client_id: str, topic_round: str, payload: bytes) -> None:
        r = self._round
        try:
            header, body = parse_frame(payload, self.opts.limits)
        except WireError as exc:
            if r:
                r.rejected += 1
            self._discard(f"{client_id}: {exc.reason}")
            return
        if header.sender != client_id or str(header.round) != topic_round or header.kind != "upload" \
                or header.federation != self.cfg.federation:
            if r:
                r.rejected += 1
            self._discard(f"{client_id}: header does not match its topic")
            return
        if r is None or header.round < r.plan.round:
            if header.index == 0:
                if r:
                    r.late += 1
                self._discard(f"{client_id}: late upload for round {header.round + 1}")
            return
        if header.round > r.plan.round or client_id not in r.plan.selected:
            if header.index == 0:
                self._discard(f"{client_id}: not selected for round {header.round + 1}")
            return
        if client_id in self._absorbed or r.reassembler.is_done(header):
            if header.index == 0:
                self._discard(f"{client_id}: duplicate upload for round {header.round + 1}")
            return
        mods = self.online.get(client_id, ())
        expected = self.server.expected_upload(mods, r.plan)
        try:
            if header.index == 0:
                if tuple(sorted(header.modalities)) != tuple(sorted(mods)):
                    raise WireError(f"modalities {header.modalities} differ from announced {mods}")
                check_spec(header.tensors, expected)
            if header.nonce != r.nonce:  # later frames are bound to frame 0 by the body's sha256
                if header.index == 0:
                    raise WireError("nonce does not match the round's announcement (a replayed or re-framed upload)")
                return
            done = r.reassembler.add_parsed(header, body)
            r.frame_bytes[header.key] = r.frame_bytes.get(header.key, 0) + len(payload)
            r.quiet_since = time.monotonic()
            if done is None:
                return
            tensors = decode_body(done.header, done.body, expected)
            self.server.absorb(client_id, mods, tensors)
        except (WireError, ValueError) as exc:
            r.rejected += 1
            self._discard(f"{client_id} round {header.round + 1}: {getattr(exc, 'reason', exc)}")
            return
        self._absorbed.add(client_id)
        self._live[client_id] = time.monotonic()
        r.bytes_up += r.frame_bytes.pop(header.key, 0)
