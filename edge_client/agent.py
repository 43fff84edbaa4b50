"""The gateway agent: sensor source -> local store; MQTT presence; train and upload when selected.

Protocol seen from a client (topics under ``fedmekt/<federation>/``):

1. connect with a retained Last Will ``offline`` on ``clients/<id>/status``; the birth message
   ``online`` + modalities is re-published on every reconnect;
2. echo the aggregator's newest liveness challenge (retained on ``liveness``) in a live "online" status
   after a random delay within the challenge's ``spread`` (so a fleet does not answer a new nonce all at
   once; never longer than ``heartbeat``) and then every ``heartbeat`` s: the aggregator's proof that this
   client is alive now;
3. read the retained ``proxy/manifest`` (config, channels, proxy hash) and ``proxy/<chunk>`` (the
   proxy set, once) — or use a provisioned bundle;
4. keep the latest global knowledge (``global/<round>/<chunk>``) and, when the retained ``rounds``
   announcement selects this client, train on the whole local store and upload
   ``clients/<id>/upload/<round>/<chunk>``;
5. when the aggregator asks again for an upload it never received (``clients/<id>/reply/resend``:
   the round's signed announcement, after a broker outage or a lost message), send the kept upload;
6. with a model service (``--public-key``), receive the signed packages on ``models/#``, verify and
   install them (a refused one leaves the model in service); with ``--infer`` each live sensor
   batch is classified by the model in service and the predictions go to ``clients/<id>/inference``.

With the aggregator's public key the manifest and every announcement (and "done") must carry its
signature (fedmekt/wire/signing.py); a manifest of an older run than the one served, or than the newest
epoch this gateway trusts (edge_client/trust.py: provisioned, then raised and kept on disk), is refused too,
the global knowledge used is the one whose hash the signed announcement names, and each upload
echoes the announcement's nonce. A rejected message is one log line; the trusted run goes on.

Retained messages are not needed: after every (re)connect the agent sends a sync request (what it
holds) and handles the aggregator's answers on ``clients/<id>/reply/…`` like the originals
(edge_client/sync.py), so it also works through a broker without retained messages.

Memory: the store lives on disk (SQLite, bounded by ``--max-samples``); a training round holds the
stored samples in RAM (samples x channels x 4 B: 200 k samples of 6 channels = 4.8 MiB), the proxy
set, one global message and one upload; the MQTT inbox and reassembly buffers are bounded.
Measured: a ``fedmekt client`` process on the demo federation (9,800 samples, 48 proxy windows)
peaks at 380-430 MiB RSS, of which 225 MiB is importing torch.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from edge_client.sync import RETRY, SyncClient, model_class, model_held
from edge_client.trust import RunTrust
from fedmekt import device_classes
from fedmekt.errors import UserError
from fedmekt.transport.mqtt import LinkOptions, Message, MqttLink, Presence
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.chunks import Complete, Reassembler
from fedmekt.wire.codec import WireError, WireLimits, decode_body, encode, parse_frame
from fedmekt.wire.runs import run_label, run_order
from fedmekt.wire.signing import open_signed
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics
from sensors.store import SampleStore

log = logging.getLogger("edge_client")


@dataclass
class AgentOptions:
    client_id: str
    federation: str = "demo"
    store: SampleStore | None = None
    state_dir: Path = Path("fedmekt-client")
    bundle: Path | None = None  # provisioned manifest + proxy set (skips the download)
    limits: WireLimits = field(default_factory=lambda: WireLimits(max_message=1 << 30, max_round=1 << 30))
    link: LinkOptions | None = None
    normalise: bool = False  # the store holds raw samples: z-score them with the manifest's statistics
    exit_when_done: bool = True  # stop at the end of the run (False: a daemon that follows the next runs)
    models: object | None = None  # edge_client.inference.ModelService: receive, verify and swap model packages
    public_key: object | None = None  # Ed25519PublicKey: act only on control messages the aggregator signed
    heartbeat: float = 20.0  # seconds between live "online" statuses echoing the liveness challenge
    min_epoch: int = 0  # runs of an older epoch are refused (provisioned; edge_client/trust.py raises it as runs come)
    device_class: str | None = None  # the encoder width this device affords (fedmekt/device_classes.py); None: the
                                     # federation's only class, or the standard one in a mixed fleet


class EdgeAgent:
    """Runs until the federation run announces its end (or ``stop`` is set).

    Announcements carry the run id of the manifest: after a fresh aggregator start the retained
    messages of the previous run (even its "done") are ignored until the new manifest arrives.
    """

    def __init__(self, url: str, options: AgentOptions):
        if options.store is None:
            raise ValueError("the agent needs a SampleStore")
        self.url, self.opts = url, options
        self.topics = Topics(options.federation)
        self.store = options.store
        self.modalities = tuple(sorted(self.store.channels or ()))
        self.manifest: fedwire.FederationManifest | None = None
        self._proxy_rx: fedwire.ProxyReceiver | None = None
        self.trainer = None
        self._globals: dict[tuple[int, str], Complete] = {}  # (round, sha256) -> global knowledge message
        self._global_rx = Reassembler(options.limits, max_pending=2)
        self._plan = None
        self._plan_ann: fedwire.Announcement | None = None  # the signed announcement of _plan (nonce, global hash)
        self._plan_at = 0.0  # time.monotonic() when _plan came
        self._early: list[bytes] = []
        self._announcement: fedwire.Announcement | None = None  # latest, applied once its run's manifest is known
        self._announcement_deadline = 0.0  # its round's deadline on our time.monotonic(), counted from receipt
        self._served: set[str] = set()  # runs this process saw rounds of: only their "done" ends --exit-when-done
        self._next_heartbeat = 0.0
        self._challenge = ""  # the aggregator's newest liveness challenge (its nonce): what our heartbeats echo
        self._jitter = random.Random()  # our own generator (seeded from the OS): answer delays apart from any seed
        self._seen_round = -1  # latest round announced in the run followed
        self._nonces: deque[str] = deque(maxlen=16)  # of the run's recent announcements (a restart brings new ones)
        self._uploaded = -1  # latest round uploaded for in the run followed
        self._answered = ""  # nonce of the announcement last uploaded for (a copy of it is not a new round)
        self._answered_at = 0.0  # time.monotonic() of that upload
        self.trust = RunTrust(options.state_dir, options.federation, options.min_epoch)
        self.sync = SyncClient(self.topics, options.client_id, self._sync_request, self._lacking, self._unserved)
        self.rounds_trained = 0
        self.done = threading.Event()
        self.refused: str | None = None  # why the federation cannot take this device (its class): run() raises it
        self.link: MqttLink | None = None
        self.connected_once = False
        self._bundle: tuple[str, object] | None = None  # (proxy sha256, proxy partition) provisioned on the device
        if options.bundle is not None:
            manifest, proxy = fedwire.load_bundle(options.bundle)
            self._bundle = (manifest.proxy_sha256, proxy)

    def run(self, stop: threading.Event | None = None) -> int:
        if not self.modalities:
            raise UserError(f"{self.opts.client_id}: the local store is empty; read a source first")
        cid = self.opts.client_id
        dc = self.opts.device_class
        presence = Presence(self.topics.status(cid), fedwire.Status("online", self.modalities, device_class=dc).to_bytes(),
                            fedwire.Status("offline", self.modalities, device_class=dc).to_bytes())
        subs = [self.topics.proxy_all, self.topics.rounds, self.topics.global_all, self.topics.liveness,
                self.sync.subscription]
        if self.opts.models is not None:
            subs.append(self.opts.models.subscription)
        link_options = self.opts.link or LinkOptions(client_id=cid, username=cid)
        with MqttLink(self.url, link_options, presence, subs).connect() as link:
            self.link, self.connected_once = link, True
            if self.manifest is None:   # a mistyped federation waits here: say for what
                log.info("%s: waiting for the manifest of federation %s (fedmekt status --federation %s shows "
                         "whether it runs)", cid, self.opts.federation, self.opts.federation)
            while not self.done.is_set() and not (stop and stop.is_set()):
                msg = link.get(timeout=0.2)
                if msg is not None:
                    self._dispatch(self.sync.unwrap(msg))
                self.sync.step(link)
                self._maybe_train()
                self._maybe_heartbeat(presence.topic)
        self.link = None
        if self.refused is not None:
            raise UserError(self.refused)
        return self.rounds_trained

    def _lacking(self) -> bool:
        """The run's proxy set, or the global knowledge of a round we are selected for, has not come: the sync
        request that says so is answered with it (the live copy may have been lost on a busy cluster)."""
        if self.manifest is None:
            return False
        waited = time.monotonic() - self._plan_at >= RETRY  # its frames are not just late
        return self.trainer is None or (waited and self._lacks_knowledge())

    def _unserved(self) -> bool:
        """Nothing is on its way to us: we follow no run, or we uploaded its last round and its end ("done") has
        not come (a cluster may lose it; the retained copy comes again when we subscribe afresh)."""
        m = self.manifest
        return m is None or self._uploaded + 1 >= int(m.config.get("rounds", 0) or 0) > 0

    def _lacks_knowledge(self) -> bool:
        """Selected for a round whose global knowledge we do not hold."""
        plan, ann = self._plan, self._plan_ann
        return plan is not None and (plan.round, ann.global_sha256) not in self._globals

    def _sync_request(self) -> SyncRequest:
        m = self.manifest
        proxy = ""
        if m is not None and self.trainer is not None:
            proxy = m.proxy_sha256
        elif self._bundle is not None:
            proxy = self._bundle[0]
        return SyncRequest(run=m.run if m else "", proxy=proxy, round=self._seen_round, uploaded=self._uploaded,
                           model=model_held(self.opts.models), liveness=self._challenge,
                           device_class=model_class(self.opts.models))

    # -- messages -----------------------------------------------------------------------------
    def _dispatch(self, msg: Message) -> None:
        t = self.topics
        try:
            if msg.topic == t.proxy_manifest:  # a restarted aggregator's fresh challenge, not this, asks for proof
                self._on_manifest(open_signed(self.opts.public_key, msg.topic, msg.payload))
            elif msg.topic.startswith(t.prefix + "/proxy/"):
                self._on_proxy_frame(msg.payload)
            elif msg.topic == t.liveness:
                self._on_challenge(open_signed(self.opts.public_key, msg.topic, msg.payload))
            elif msg.topic == t.rounds:
                self._on_announcement(open_signed(self.opts.public_key, msg.topic, msg.payload), msg)
            elif msg.topic == t.reply(self.opts.client_id, t.resend):
                self._on_announcement(open_signed(self.opts.public_key, t.rounds, msg.payload), msg, asked=True)
            elif msg.topic.startswith(t.prefix + "/global/"):
                self._on_global(msg.payload)
            elif msg.topic.startswith(t.prefix + "/models/") and self.opts.models is not None:
                self.opts.models.handle(msg.topic, msg.payload)
        except WireError as exc:
            log.warning("%s: ignored message on %s: %s", self.opts.client_id, msg.topic, exc.reason)
        except UserError as exc:  # an installed package this device cannot run (e.g. none of its modalities)
            log.error("%s: model package not put in service: %s", self.opts.client_id, exc)

    def _on_proxy_frame(self, payload: bytes) -> None:
        """Retained chunks may arrive before their manifest, also while the previous run's trainer still
        serves (the next run's chunks are published first): hold them (bounded, once each) until it is known."""
        if self._proxy_rx is None or self.trainer is not None:
            if payload not in self._early and sum(map(len, self._early)) + len(payload) <= self.opts.limits.max_message:
                self._early.append(payload)
            return
        self._ready(self._proxy_rx.add(payload))

    def _on_manifest(self, payload: bytes) -> None:
        """A (new) federation run: forget the previous run's plan and knowledge, get its proxy set."""
        if not payload:
            return
        manifest = fedwire.FederationManifest.from_bytes(payload)
        if self.manifest is not None and run_order(manifest.run) < run_order(self.manifest.run):
            raise WireError(f"manifest of run {manifest.run} is older than the run {self.manifest.run} served")
        self.trust.check(manifest.run)
        refused = device_classes.manifest_refusal(manifest.config, self.opts.device_class)
        if refused is not None:  # a setting of this device no run of this federation will take: stop, say why
            self.refused = f"{self.opts.client_id}: {refused}"
            self.done.set()
            return
        if self.opts.public_key is not None:  # signed: the floor may rise (persisted before anything acts on it)
            self.trust.follow(manifest.run)
        if self.opts.models is not None:
            self.opts.models.trust_run(manifest.run, manifest.name)
        if self.manifest is not None and manifest.to_bytes() == self.manifest.to_bytes():
            self._early.clear()  # chunks re-published with the run we serve (an aggregator resume)
            return
        self.manifest, self.trainer, self._plan = manifest, None, None
        self._seen_round = self._uploaded = -1
        self._nonces.clear()
        self._globals.clear()
        self._global_rx = Reassembler(self.opts.limits, max_pending=2)  # a new run may resend identical knowledge
        self._proxy_rx = fedwire.ProxyReceiver(manifest)
        if not manifest.proxy_sha256:
            self._ready(None)
        elif self._bundle is not None and self._bundle[0] == manifest.proxy_sha256:
            self._ready(self._bundle[1])
        early, self._early = self._early, []
        for frame in early:
            try:
                self._on_proxy_frame(frame)
            except WireError:  # a chunk of another run's proxy set
                continue
        if self.trainer is not None:
            self._early.clear()  # what was held again after the proxy set completed belongs to no pending run
        self._apply_announcement()

    def _ready(self, proxy) -> None:
        """Build the local trainer once the manifest (and the proxy set, when needed) is known."""
        m = self.manifest
        if m is None or (m.proxy_sha256 and proxy is None):
            return
        from edge_client.training import LocalTrainer

        cfg = m.federation_config()
        held = tuple(x for x in self.modalities if x in cfg.pair)
        if not held:
            raise WireError(f"this device holds {self.modalities}, the federation needs {cfg.pair}")
        self.trainer = LocalTrainer(cfg, self.opts.client_id, held, m.channels, proxy, self.store,
                                    self.opts.state_dir, m.normalizer if self.opts.normalise else None, run=m.run,
                                    device_class=device_classes.resolve(cfg.fleet, self.opts.device_class))

    def _on_announcement(self, payload: bytes, msg: Message, asked: bool = False) -> None:
        """``asked``: a request to re-send (the aggregator lacks our upload for this announcement: lost in a
        broker outage, say). Asked after our upload went, the answer is forgotten and the stored upload goes
        again; asked while we were still training, the upload answers it. The round's deadline is counted on
        our monotonic clock from ``msg``'s arrival: no wall clock, ours or the aggregator's, is trusted."""
        if not payload:
            return
        ann = fedwire.Announcement.from_bytes(payload)
        if ann.federation != self.opts.federation:
            raise WireError("announcement for another federation")
        if asked and ann.nonce and ann.nonce == self._answered and msg.received > self._answered_at:
            self._answered = ""
        self._announcement = ann
        self._announcement_deadline = ann.deadline_from(msg.received, msg.expiry)
        self._apply_announcement()
        if asked and self._lacks_knowledge():
            self.sync.ask_now()  # its knowledge went by while we could not hear it: not on the way any more

    def _apply_announcement(self) -> None:
        """Act on the latest announcement if it belongs to the run of the manifest we hold."""
        ann, m = self._announcement, self.manifest
        if ann is None or m is None or ann.run != m.run:
            return
        self._announcement = None
        if ann.done:
            if self.opts.exit_when_done and m.run in self._served:
                self.done.set()
            else:
                log.info("%s: run %s finished; waiting for the next run", self.opts.client_id,
                         run_label(m.run, m.name))
            return
        plan = ann.round_plan()
        if ann.nonce and ann.nonce in self._nonces and plan.round < self._seen_round:
            return  # a late copy of an older round's announcement (reordered, or asked for as that round closed)
        if ann.nonce not in self._nonces:
            self._nonces.append(ann.nonce)
        self._served.add(m.run)
        self._seen_round = max(self._seen_round, plan.round)
        again = ann.nonce and ann.nonce == self._answered
        if self.opts.client_id in plan.selected and self._announcement_deadline > time.monotonic() and not again:
            if self._plan is None or self._plan_ann.nonce != ann.nonce:
                self._plan_at = time.monotonic()
            self._plan, self._plan_ann = plan, ann

    def _on_global(self, payload: bytes) -> None:
        header, body = parse_frame(payload, self.opts.limits)
        if header.kind != "global" or header.sender != fedwire.AGGREGATOR_ID \
                or header.federation != self.opts.federation:
            raise WireError("global frame with a wrong header")
        done = self._global_rx.add_parsed(header, body)
        if done is not None:
            log.debug("%s: global knowledge of round %d received (sha256 %s)", self.opts.client_id, header.round + 1,
                      header.sha256)
            self._globals[(header.round, header.sha256)] = done
            for old in [k for k in self._globals if k[0] < header.round - 1] + list(self._globals)[:-4]:
                self._globals.pop(old, None)  # bounded: a forged copy cannot crowd out memory

    def _on_challenge(self, payload: bytes) -> None:
        """A new liveness challenge: echo it after a random delay within its ``spread`` (the aggregator draws one
        as each round opens and counts only statuses that echo one of its last two; the whole fleet answering
        at once would be a burst per round), at most ``heartbeat`` s, when the next heartbeat would go anyway."""
        if not payload:
            return
        challenge = fedwire.LivenessChallenge.from_bytes(payload)
        if challenge.federation != self.opts.federation:
            raise WireError(f"liveness challenge of federation {challenge.federation!r}")
        if challenge.nonce != self._challenge:
            delay = self._jitter.uniform(0.0, min(challenge.spread, self.opts.heartbeat))
            self._challenge, self._next_heartbeat = challenge.nonce, time.monotonic() + delay

    def _maybe_heartbeat(self, topic: str) -> None:
        """Publish "online" live (not retained), echoing the liveness challenge, every ``heartbeat`` s and when a
        new challenge's delay is up. None before the first challenge: a status without proof proves nothing."""
        now = time.monotonic()
        if self._challenge and now >= self._next_heartbeat and self.link is not None and self.link.connected:
            self.link.publish(topic, fedwire.Status("online", self.modalities, proof=self._challenge,
                                                   device_class=self.opts.device_class).to_bytes())
            self._next_heartbeat = now + self.opts.heartbeat

    # -- inference ----------------------------------------------------------------------------
    def recognise(self, batch) -> int:
        """Classify a raw sensor batch with the model in service and publish the predictions (any thread).

        Predictions are live: while disconnected, or before a model is installed, they are dropped.
        """
        if self.opts.models is None:
            return 0
        predictions = self.opts.models.feed(batch)
        link = self.link
        if not predictions or link is None or not link.connected:
            return 0
        topic = self.topics.inference(self.opts.client_id)
        for p in predictions:
            link.publish(topic, p.to_json().encode())
        return len(predictions)

    # -- training -----------------------------------------------------------------------------
    def _maybe_train(self) -> None:
        plan, trainer = self._plan, self.trainer
        if plan is None or trainer is None:
            return
        if plan.round < trainer.last_round:
            log.warning("%s: the aggregator restarted the federation at round %d (local model is at round %d); "
                        "starting from a fresh local model", self.opts.client_id, plan.round + 1, trainer.last_round + 1)
            trainer.restart()
        cached = trainer.cached_upload(plan.round)
        t0 = time.perf_counter()
        if cached is None:
            glob = self._globals.get((plan.round, self._plan_ann.global_sha256))
            if glob is None:
                return
            try:
                downstream = decode_body(glob.header, glob.body)
                upload = trainer.train(plan, downstream)
            except (WireError, ValueError) as exc:
                log.warning("%s: cannot train round %d: %s", self.opts.client_id, plan.round + 1, exc)
                self._plan = None
                return
            self.rounds_trained += 1
        else:
            upload = cached
            log.info("%s: re-sending the upload of round %d", self.opts.client_id, plan.round + 1)
        self._plan = None
        cfg = trainer.cfg
        frames = encode(upload, cfg.wire_format, federation=cfg.federation, round_=plan.round,
                        sender=self.opts.client_id, kind="upload", modalities=trainer.modalities,
                        nonce=self._plan_ann.nonce,
                        limits=self.opts.limits)
        sending = time.monotonic()  # a request to re-send that arrives later is about this upload
        sent = self.link.publish_all((self.topics.upload_chunk(self.opts.client_id, plan.round, i), f)
                                     for i, f in enumerate(frames))
        self._uploaded = plan.round
        self._answered, self._answered_at = self._plan_ann.nonce, sending
        if cached is None:
            log.info("%s: round %d trained on %d samples (%d proxy windows) in %.2f s, %.1f KiB uploaded",
                     self.opts.client_id, plan.round + 1, self.store.count(), len(plan.proxy_windows),
                     time.perf_counter() - t0, sent / 1024)
        trainer.persist()  # the upload is on its way: the durable writes no longer hold up the round
