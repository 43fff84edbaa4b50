"""The aggregator: drives ServerEngine rounds over MQTT.

Per round: plan among the selectable clients (seeded): online, with a fresh proof of life bound to a
liveness challenge this process issued (aggregator/presence.py: a retained "online", a status queued
while it was down or a replayed one proves nothing) and, when the federation has a client list,
provisioned, less those sitting out a backoff for having sent no upload when selected
(aggregator/backoff.py); with none left (every gateway restarting) it waits for them. Then publish
the global knowledge (``global/<round>/<chunk>``) and then the retained announcement (``rounds``, with a
message expiry = the round deadline), fold each valid upload into the engine's
streaming mean the moment its last chunk arrives, close the round at the quorum or
the deadline, finish it (server update, classifier, evaluation), append the metrics
row, checkpoint, publish the row on ``metrics``. Late, duplicate, unselected or
invalid uploads are discarded with one log line each, and so is an upload still missing
chunks when its round closes; nothing undecoded reaches the engine. With a signing key it
also publishes a signed model package every ``package_every`` rounds (built on a worker thread from a
snapshot while the next rounds run: aggregator/packages.py) and at the end (export/publisher.py), bound to
this run, and signs the control plane: the manifest, every
announcement (with the round's nonce and the hash of its global knowledge) and "done"; an upload
whose header does not echo the round's nonce is discarded. It watches its retained manifest,
proxy chunks and announcement and puts its own back when another publisher replaces them (clients refuse the
forgery, but one that starts later would find nothing else), and after every reconnect it publishes all of
them and its newest package (a mixed fleet's: of each class) again (what was put there while it was away
arrives flagged retained, like its own). No wall clock is read: a fresh run's id carries the next epoch of
the run counter in the state folder (fedmekt/run_counter.py), the announcement carries the round's timeout
as a duration, and the round closes on this process's monotonic clock.
Retained messages are an optimisation: a client's sync request (``clients/<id>/sync``, sent on
every (re)connect) is answered on its ``reply/`` topics with what it lacks — the manifest, the proxy
set, the open round's announcement (and global knowledge when it owes an upload), the newest
package — rate-limited per client (aggregator/sync.py), so a broker without retained messages
loses nothing.
Memory: one reassembly buffer bounded by ``max_pending`` messages plus the engine's
per-key running sums, independent of the number of clients.

The Aggregator is the round driver; it composes one module per other job: aggregator/presence.py (who is
selectable), aggregator/control.py (the signed retained control plane and its guard),
aggregator/sync_answers.py (sync answers), aggregator/uploads.py (upload validation) and
aggregator/packages.py (model packages).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import secrets
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from aggregator.backoff import Backoff
from aggregator.checkpoint import CheckpointWriter, load_checkpoint
from aggregator.control import ControlPlane
from aggregator.fleet import ClassGate
from aggregator.open_round import OpenRound
from aggregator.packages import Packages
from aggregator.presence import Presence, answer_spread
from aggregator.sync_answers import SyncAnswers
from aggregator.uploads import UploadDesk
from fedmekt.experiment.accounting import message_bytes
from fedmekt.config import FederationConfig
from fedmekt.learn.engine import ServerEngine, client_view
from fedmekt.experiment.in_process import RunResult, final_record, run_name, run_record
from fedmekt.transport.mqtt import LinkOptions, Message, MqttLink
from fedmekt.run_counter import next_epoch
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import WireLimits, encode, parse_frame
from fedmekt.wire.runs import new_run_id
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
    name: str | None = None  # the run's id in rows and report (CLI: its folder's name; default <variant>-seed<seed>)
    publish_proxy: bool = True  # False when every client is provisioned with the bundle
    signing_key: object | None = None  # Ed25519PrivateKey: sign the control plane and model packages (None = never)
    packages: bool = True  # with a signing key, also publish model packages (simulate signs the control plane only)
    package_every: int = 10  # rounds between packages (0 = only at the end); the end always publishes
    known_clients: frozenset[str] | None = None  # the federation's provisioned client ids (None = any id)
    liveness: float = 120.0  # seconds a proof of life lasts at most (aggregator/presence.py)
    answer_rate: float = 500.0  # answers/s to a new liveness challenge the fleet spreads itself to (0 = at once)
    sync_interval: float = 3.0  # a client's sync requests are answered at most this often
    sync_bulk_interval: float = 30.0  # the proxy set or a package goes to one client at most this often
    resend_after: float = 10.0  # s without an upload frame before owed clients are asked again (doubling; 0 = never)
    state_dir: Path | None = None  # where the run counter survives runs (fedmekt/run_counter.py); None = out's parent
    min_epoch: int = 1  # a fresh run's epoch is at least this (after losing the state folder)


class Aggregator:
    """One federation's server process. ``run()`` returns the same RunResult as the in-process runner."""

    def __init__(self, cfg: FederationConfig, split: FederatedSplit, url: str, options: AggregatorOptions,
                 link_options: LinkOptions | None = None, rate_hz: float | None = None):
        self.cfg, self.split, self.url, self.opts = cfg, split, url, options
        self.topics = Topics(cfg.federation)
        self.link_options = link_options or LinkOptions(client_id=f"{cfg.federation}-aggregator")
        self.rate_hz = split.manifest.get("rate_hz", 0.0) if rate_hz is None else rate_hz  # for run.json
        self.presence = Presence(cfg.federation, cfg.pair, options.known_clients, options.liveness,
                                 ClassGate(cfg))
        self.uploads = UploadDesk(cfg.federation, options.limits)
        self.control = ControlPlane(options.signing_key, self.topics.rounds)
        self.packages = Packages(cfg.federation, options.signing_key, options.packages, options.package_every,
                                 options.out)
        self.backoff = Backoff()  # who sits out rounds for having sent no upload (restored on resume)
        self._round: OpenRound | None = None
        self._absorbed: set[str] = set()
        self.server: ServerEngine | None = None
        self.run_id = ""  # set by run(): new for a fresh start, kept from the checkpoint on resume
        self.name = ""  # set by run(): the run's name, which the manifest carries beside run_id
        self.published = threading.Event()  # set once the manifest and proxy set are on the broker
        self.before_round = None  # optional callable(round, aggregator) run before planning each round (tests)
        self.sync = SyncAnswers(self)
        self._births = 0  # the link's connects already handled (a reconnect mid-round asks for lost uploads)
        self._foreign_seen: set[str] = set()  # other federations whose messages reached us (warned once each)
        self._last_round_s: float | None = None  # the last round's duration: caps the liveness answers' spread

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg, opts = self.cfg, self.opts
        opts.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.server = server = ServerEngine(cfg, self.split.channels, self.split.label_names, self.split.proxy,
                                            self.split.labelled, self.split.test,
                                            normalizer=self.split.normalizer, rate_hz=self.rate_hz)
        rows: list[dict] = []
        resumed = load_checkpoint(opts.out, cfg.to_dict())
        if resumed is not None:
            server.load_state_dict(resumed[0])
            rows, self.run_id = resumed[1], resumed[2]
            self.backoff = Backoff.from_row(rows[-1] if rows else None)
            log.info("resuming from checkpoint: %d of %d rounds done", server.rounds_completed, cfg.rounds)
        if not self.run_id:  # a fresh run (or a checkpoint from before run ids): the next epoch
            self.run_id = new_run_id(next_epoch(self.state_dir, cfg.federation, opts.min_epoch))
        self.name = name = opts.name or run_name(cfg)
        base = {**run_record(cfg, name), "federation_run": self.run_id}   # the run as the folder and the wire name it
        with MqttLink(self.url, self.link_options, subscriptions=[
                self.topics.status_all, self.topics.proxy_all, self.topics.rounds, self.topics.liveness],
                live=[self.topics.uploads_all, self.topics.sync_all]).connect() as link, \
                closing(self.packages):  # no package goes out once the link closes; a device's retained
            # messages on the live topics never reach us (a login parking many of them flooded the inbox)
            self.link = self.control.link = link
            log.info("federation %s on broker %s (run %s, federation run %s)", cfg.federation,
                     ", ".join(map(str, link.addresses)), name, self.run_id)
            self._publish_federation()
            self._new_challenge(keep_previous=False)  # nothing sent before this process started proves liveness
            self.packages.start(link, self.run_id, cfg, server)
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
                self.packages.publish(server, final=False)
                bar.set_postfix({f"f1_{m}": f"{row.get(f'f1_paper_{m}', float('nan')):.3f}" for m in cfg.pair})
            checkpoints.flush()
            if self.sync.limiter.requests:
                log.debug("sync requests: %d taken, %d answered", self.sync.limiter.requests, self.sync.limiter.answers)
            self.packages.publish(server, final=True)
            self.control.publish(self.topics.rounds, fedwire.Announcement(
                cfg.federation, None, 0.0, done=True, rounds=cfg.rounds, run=self.run_id).to_bytes())
        final = final_record(cfg, base, server.proxy_delivery, self._proxy_bytes * len(self.online),
                             server.final_evaluation(), time.perf_counter() - start)
        state = server.final_state()   # the deployed model is the final evaluation's (computed once)
        return RunResult(name, cfg, rows, final, state, server.run_info())

    @property
    def online(self) -> dict[str, tuple[str, ...]]:
        """Online clients and the pair's modalities each holds (aggregator/presence.py)."""
        return self.presence.online

    @online.setter
    def online(self, value: dict[str, tuple[str, ...]]) -> None:
        self.presence.online = value

    @property
    def discarded(self) -> list[str]:
        """One line per discarded upload (also logged)."""
        return self.uploads.discarded

    @property
    def sync_limiter(self):
        return self.sync.limiter

    @property
    def state_dir(self) -> Path:
        """Where the run counter lives: it must outlive run folders (a fresh run often gets a fresh --out)."""
        return self.opts.state_dir if self.opts.state_dir is not None else self.opts.out.resolve().parent

    def _publish_federation(self) -> None:
        """Retained manifest and (once) the proxy set: a client arriving at any time finds them."""
        manifest, frames = fedwire.build(self.cfg, self.split, self.opts.limits, run=self.run_id, name=self.name)
        items = [(self.topics.proxy_chunk(i), f) for i, f in enumerate(frames)] if self.opts.publish_proxy else []
        self._proxy_bytes = sum(len(f) for f in frames) if self.opts.publish_proxy else 0
        # clear a stale announcement (e.g. "done" of the run being extended) before the new manifest
        self.link.publish_all([(self.topics.rounds, b"")], retain=True)
        self.link.publish_all(items, retain=True)
        for topic, frame in items:  # bound to the signed manifest by its hash: guarded, not signed
            self.control.remember(topic, frame)
        self.control.publish(self.topics.proxy_manifest, manifest.to_bytes())
        self.manifest, self.proxy_frames = manifest, frames
        self.published.set()

    def _new_challenge(self, keep_previous: bool) -> None:
        """Issue the next liveness challenge (aggregator/presence.py), retained, signed and guarded."""
        known = self.opts.known_clients
        fleet = len(known) if known else len(self.presence.online)
        spread = answer_spread(fleet, self.opts.answer_rate, self.opts.liveness, self._last_round_s)
        challenge = fedwire.LivenessChallenge(self.cfg.federation, self.presence.new_challenge(keep_previous), spread)
        self.control.publish(self.topics.liveness, challenge.to_bytes())

    def wait_for_clients(self, want: int, timeout: float) -> None:
        """Process presence messages until ``want`` clients are online or ``timeout`` seconds passed."""
        self._wait_selectable(want, time.monotonic() + timeout)
        if not self.selectable():
            from fedmekt.errors import UserError

            raise UserError(f"no client came online within {timeout:.0f} s")
        if len(self.selectable()) < want:
            log.warning("going on with %d of %d expected clients online", len(self.selectable()), want)

    def selectable(self) -> list[str]:
        """Online clients with a fresh proof of life (aggregator/presence.py)."""
        return self.presence.selectable()

    def _eligible(self) -> list[str]:
        """Selectable clients not sitting out the next round (aggregator/backoff.py): what ``min_clients`` and
        the waits count."""
        selectable = self.selectable()
        benched = self.backoff.sitting_out(self.server.rounds_completed, selectable)
        return [c for c in selectable if c not in benched]

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
        if len(self._eligible()) < least:
            log.info("%d of %d clients online before round %d: waiting up to %.0f s for the rest",
                     len(self._eligible()), least, rnd + 1, self.opts.wait_timeout)
            self._wait_selectable(least, time.monotonic() + self.opts.wait_timeout)

    def _wait_selectable(self, want: int, deadline: float) -> None:
        """Process messages until ``want`` clients are selectable or ``deadline``; says so whenever the count
        changes, and every few seconds."""
        said, told = -math.inf, -1
        while (have := len(self._eligible())) < want and time.monotonic() < deadline:
            if have != told or time.monotonic() - said >= WAIT_LOG_S:
                log.info("waiting for %d clients (%d online)", want, have)
                said, told = time.monotonic(), have
            self._pump(min(deadline, time.monotonic() + 0.2))

    def _one_round(self, rnd: int) -> dict:
        cfg, server = self.cfg, self.server
        t0 = time.perf_counter()
        self._await_clients(rnd)
        selectable = self.selectable()
        candidates = self.backoff.candidates(rnd, selectable)
        benched = {c: why for c, why in self.backoff.sitting_out(rnd, selectable).items() if c not in candidates}
        for c, why in benched.items():
            log.info("round %d of %d: %s sits out (%s)", rnd + 1, cfg.rounds, c, why)
        plan = server.plan_round(rnd, candidates)
        shown = ", ".join(plan.selected[:6]) + (", …" if len(plan.selected) > 6 else "")
        log.debug("round %d of %d opens: %d clients selected (%s)", rnd + 1, cfg.rounds, len(plan.selected), shown)
        down = server.downstream(plan)
        frames = encode(down, cfg.wire_format, federation=cfg.federation, round_=rnd, sender=fedwire.AGGREGATOR_ID,
                        kind="global", limits=self.opts.limits)
        self.link.publish_all((self.topics.global_chunk(rnd, i), f) for i, f in enumerate(frames))
        server.begin_round(plan)
        self._absorbed = set()
        need = max(1, math.ceil(self.opts.quorum * len(plan.selected)))
        nonce = secrets.token_hex(8)
        deadline = time.monotonic() + self.opts.round_timeout  # our own clock; clients count the timeout on theirs
        self._round = OpenRound(plan, deadline, need, Reassembler(self.opts.limits, self.opts.max_pending),
                                nonce=nonce, global_frames=frames, resend_wait=self.opts.resend_after)
        self.control.publish(self.topics.rounds, fedwire.Announcement(
            cfg.federation, plan.to_json(), self.opts.round_timeout, run=self.run_id, nonce=nonce,
            global_sha256=parse_frame(frames[0], self.opts.limits)[0].sha256).to_bytes(),
            expiry=int(self.opts.round_timeout) + 1)
        self._new_challenge(keep_previous=True)  # proofs last at most two rounds
        opened = time.monotonic()
        while not self._round_complete() and time.monotonic() < deadline:
            self._pump(min(time.monotonic() + 0.5, deadline))
            self._ask_if_quiet()
        if len(self._absorbed) < len(plan.selected):
            log.warning("round %d of %d closes with %d of %d uploads", rnd + 1, cfg.rounds, len(self._absorbed),
                        len(plan.selected))
        r = self._round
        for sender, have, count in r.reassembler.forget_round(rnd):
            self.uploads.discard(f"{sender} round {rnd + 1}: incomplete upload ({have} of {count} chunks) when the "
                                 "round closed")
        missed = self.backoff.close(rnd, plan.selected, self._absorbed, self.online)
        for c, why in missed.items():
            log.warning("round %d of %d: %s %s", rnd + 1, cfg.rounds, c, why)
        row = server.finish_round(plan)
        bytes_down = sum(message_bytes(client_view(down, self.online.get(c, ())), cfg.wire_format, kind="global")
                         for c in plan.selected)
        self._round = None
        self._last_round_s = time.monotonic() - opened  # at most the time from this round's opening to the next's
        f1 = " ".join(f"f1 {m} {row[f'f1_paper_{m}']:.3f}" for m in cfg.pair if f"f1_paper_{m}" in row)
        log.info("round %d of %d closed: %d of %d uploads, %.2f s%s", rnd + 1, cfg.rounds, len(self._absorbed),
                 len(plan.selected),
                 time.perf_counter() - t0, f", {f1}" if f1 else "")
        return {**row, "bytes_down": bytes_down, "bytes_up": r.bytes_up, "bytes_global": sum(len(f) for f in frames),
                "proxy_windows": len(plan.proxy_windows), "wall_s": round(time.perf_counter() - t0, 4),
                "rejected": r.rejected, "late": r.late, "missed": missed, "benched": benched,
                "backoff": self.backoff.to_row()}

    # -- message handling ---------------------------------------------------------------------
    def _pump(self, until: float) -> None:
        while True:
            left = min(until, self.sync_limiter.next_due()) - time.monotonic()
            msg = self.link.get(timeout=max(0.0, left))
            if msg is not None:
                self._dispatch(msg)
            self._after_reconnect()
            self.sync.answer_due()
            if time.monotonic() >= until or (self._round and self._round_complete()):
                return

    def _round_complete(self) -> bool:
        """Quorum reached, or every selected client that could still upload has (the rest went offline)."""
        r = self._round
        could = sum(1 for c in r.plan.selected if c in self.online or c in self._absorbed)
        return len(self._absorbed) >= min(r.need, could)

    def _dispatch(self, msg: Message) -> None:
        if msg.topic in self.control and not msg.retain:  # live: published while we run (retained = older)
            self.control.guard(msg.topic, msg.payload, round_open=self._round is not None)
            return
        if not msg.topic.startswith(self.topics.prefix + "/"):
            self._foreign(msg.topic)
            return
        parts = msg.topic.split("/")
        prefix = len(self.topics.prefix.split("/"))
        if len(parts) == prefix + 3 and parts[prefix] == "clients" and parts[-1] == "status":
            self.presence.on_status(parts[prefix + 1], msg.payload, msg.retain)
        elif len(parts) == prefix + 3 and parts[prefix] == "clients" and parts[-1] == "sync":
            self.sync.on_sync(parts[prefix + 1], msg.payload)
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

    def _after_reconnect(self) -> None:
        """Back on the broker after any disconnect (a network cut, or another connection that took over our
        session): whatever replaced our retained messages meanwhile (a replayed older run's manifest or
        package, say) came back flagged retained, which we never take for a forgery; so put all of ours back.
        Uploads published while we were away reached nobody: ask every selected client we lack one from."""
        births, self._births = self._births, self.link.births
        if births in (0, self._births):
            return
        self.control.reassert(self._round is not None, self.packages.messages())
        self._new_challenge(keep_previous=True)  # what was queued for us while away proves at most the old one
        r = self._round
        if r is not None:
            self._ask_resend([c for c in r.plan.selected if c not in self._absorbed], "reconnected to the broker")

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
        announcement = self.control.payload(self.topics.rounds)
        try:
            self.link.publish_all((self.topics.reply(c, self.topics.resend), announcement) for c in owed)
        except TimeoutError:
            log.warning("request for the uploads of round %d not acknowledged in time", rnd + 1)

    def _on_upload(self, client_id: str, topic_round: str, payload: bytes) -> None:
        if self.uploads.take(client_id, topic_round, payload, self._round, self._absorbed, self.server,
                             self.online.get(client_id, ()), self.presence.classes.get(client_id)):
            self._absorbed.add(client_id)
            self.presence.mark_live(client_id)
