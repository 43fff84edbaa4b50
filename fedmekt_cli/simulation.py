"""``fedmekt simulate``: a whole federation through a real broker, every party a separate MQTT client.

The aggregator and each client share no Python objects: each client replays its partition
through a ReplaySource into its own SampleStore (SQLite file) and talks to the aggregator only
through the broker, exactly as separate devices would (threads with their own connections; the
per-round seeds make the result equal to the in-process ``reproduce``). A separate subscriber
counts every message on the federation's topics, so the report states the bytes really seen on
the wire next to the accounted sizes. The control plane runs signed, as in a deployment: an
ephemeral Ed25519 key pair is made per simulation, the aggregator signs with it and every client
verifies (no model packages are built).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fedmekt.transport.mqtt import LinkOptions, MqttLink
from edge_client.sources import fill_store, partition_recordings
from sensors.store import SampleStore
from sensors.partition import ClientPartition, FederatedSplit

log = logging.getLogger("fedmekt.simulate")


def publish_packet_bytes(topic: str, payload_len: int, v5: bool) -> int:
    """Size of a QoS 1 PUBLISH packet: fixed header + topic + packet id (+ v5 property length) + payload."""
    remaining = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + payload_len
    varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + varint + remaining


@dataclass
class WireCounter:
    """Subscribes to ``fedmekt/<federation>/#`` and counts every message by kind (and round)."""

    url: str
    prefix: str
    payload: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    packets: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    per_round: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))

    def start(self) -> "WireCounter":
        self._link = MqttLink(self.url, LinkOptions(client_id=f"wire-counter-{time.monotonic_ns()}"),
                              subscriptions=[f"{self.prefix}/#"]).connect()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="wire-counter", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        depth = len(self.prefix.split("/"))
        while not self._stop.is_set() or self._link.pending:
            msg = self._link.get(timeout=0.1)
            if msg is None:
                continue
            parts = msg.topic.split("/")[depth:]
            kind = parts[2] if parts and parts[0] == "clients" and len(parts) > 2 else parts[0] if parts else "?"
            self.payload[kind] += len(msg.payload)
            self.packets[kind] += publish_packet_bytes(msg.topic, len(msg.payload), self._link.v5)
            self.messages[kind] += 1
            if kind in ("upload", "global"):
                rnd = parts[3] if kind == "upload" else parts[1]
                if rnd.isdigit():
                    self.per_round[(kind, int(rnd))] += publish_packet_bytes(msg.topic, len(msg.payload),
                                                                              self._link.v5)

    def stop(self, settle: float = 0.5) -> dict:
        time.sleep(settle)
        self._stop.set()
        self._thread.join(timeout=10)
        self._link.close()
        return self.summary()

    def summary(self) -> dict:
        return {"payload_bytes": dict(self.payload), "packet_bytes": dict(self.packets),
                "messages": dict(self.messages),
                "per_round": {f"{k}/{r}": v for (k, r), v in sorted(self.per_round.items())}}


def client_store(path: Path, client: ClientPartition, dataset: str, rate_hz: float, label_names) -> SampleStore:
    """The device's store: filled by replaying its partition, or reused as is when a previous run filled it."""
    if path.exists():
        store = SampleStore(path)
        if store.count():
            return store
        store.close()
    return fill_store(path, partition_recordings(client, dataset, rate_hz, label_names), client.modalities)


@dataclass
class Simulation:
    """Everything ``simulate`` produced."""

    result: object  # fedmekt.experiment.in_process.RunResult
    wire: dict
    wall_s: float
    discarded: list[str]


def run_simulation(cfg, split: FederatedSplit, *, url: str | None = None, out: Path, progress: bool = True,
                   rate_hz: float | None = None, round_timeout: float = 600.0, quorum: float = 1.0,
                   workdir: Path | None = None, late_clients: tuple[str, ...] = (),
                   before_round=None, name: str | None = None) -> Simulation:
    """Run ``cfg`` on ``split`` with an aggregator and one agent per client, all through ``url``.

    Without ``url`` an embedded broker is started (mosquitto when installed, else amqtt).
    ``late_clients`` join only after round 0 has started (tests of late joining). ``rate_hz`` (the devices'
    sample clock and run.json's rate) defaults to the split's. ``name``: the run's id in its rows (``simulate``
    gives its folder's name; default ``<variant>-seed<seed>``, as the in-process runner names it).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from aggregator.service import Aggregator, AggregatorOptions
    from fedmekt import device_classes
    from edge_client.agent import AgentOptions, EdgeAgent
    from fedmekt.transport.broker import embedded_broker

    start = time.perf_counter()
    rate_hz = split.manifest["rate_hz"] if rate_hz is None else rate_hz
    broker = embedded_broker() if url is None else None
    url = url or broker.url
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedmekt-sim-"))
    stop = threading.Event()
    threads, errors = [], []
    counter = None
    try:
        # every device's store is filled before anyone waits: a data problem fails here, not as a hang
        stores = {c.client_id: client_store(workdir / c.client_id / "store.sqlite", c, cfg.dataset, rate_hz,
                                            split.label_names) for c in split.clients}
        counter = WireCounter(url, f"fedmekt/{cfg.federation}").start()

        key = Ed25519PrivateKey.generate()  # ephemeral: the signed control plane is what a simulation runs
        options = AggregatorOptions(out=Path(out), wait_clients=len(split.clients) - len(late_clients),
                                    round_timeout=round_timeout, quorum=quorum, progress=progress,
                                    signing_key=key, packages=False, name=name)
        aggregator = Aggregator(cfg, split, url, options, rate_hz=rate_hz)
        classes = device_classes.assign(cfg.fleet, [c.client_id for c in split.clients])  # as reproduce deals them

        def client_main(c: ClientPartition, delay_until: threading.Event | None) -> None:
            try:
                store = stores[c.client_id]
                # a fresh run's manifest replaces stale retained messages before any client connects
                for gate in (aggregator.published, delay_until or aggregator.published):
                    while not gate.wait(0.2):
                        if stop.is_set():
                            return
                agent = EdgeAgent(url, AgentOptions(c.client_id, cfg.federation, store, workdir / c.client_id,
                                                    public_key=key.public_key(),
                                                    device_class=classes[c.client_id]))
                agent.run(stop)
                store.close()
            except Exception as exc:  # reported after the run
                log.exception("client %s failed", c.client_id)
                errors.append(f"{c.client_id}: {exc}")

        round0 = threading.Event()
        for c in split.clients:
            t = threading.Thread(target=client_main, args=(c, round0 if c.client_id in late_clients else None),
                                 name=f"client-{c.client_id}", daemon=True)
            t.start()
            threads.append(t)
        aggregator.before_round = lambda rnd, agg: (round0.set(), before_round and before_round(rnd, agg))
        result = aggregator.run()
        for t in threads:
            t.join(timeout=30)
        wire, counter = counter.stop(), None
    finally:   # on Ctrl-C too: every device and the counter leave the broker before it stops (no "disconnected")
        stop.set()
        leave_by = time.monotonic() + 10   # a device in the middle of its training step stops after it
        for t in threads:
            t.join(timeout=max(0.0, leave_by - time.monotonic()))
        if counter is not None:
            counter.stop(settle=0)
        if broker is not None:
            broker.stop()
    if errors:
        from fedmekt.errors import UserError

        raise UserError(f"{len(errors)} simulated client(s) failed: {errors[0]}")
    return Simulation(result, wire, time.perf_counter() - start, aggregator.discarded)


def write_outputs(out: Path, sim: Simulation) -> Path:
    """The reproduce report (tables, JSONL; the plots come with report.html) plus ``wire.json`` with the bytes
    counted on the wire."""
    from fedmekt.artifacts import atomic_write_bytes
    from fedmekt.observe.report import write_report

    report = write_report(out, [sim.result])
    rows = sim.result.rows
    accounted = {"upload": sum(r["bytes_up"] for r in rows), "global": sum(r["bytes_global"] for r in rows),
                 "proxy": sim.result.final.get("bytes_proxy_once", 0)}
    summary = {**sim.wire, "accounted_payload_bytes": accounted, "wall_s": round(sim.wall_s, 2),
               "discarded_uploads": sim.discarded}
    atomic_write_bytes(Path(out) / "wire.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    return report
