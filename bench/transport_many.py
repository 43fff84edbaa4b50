"""Part (c) of bench_transport: one round with N lightweight clients through a private mosquitto.

Lightweight clients do no training: each id announces itself online and, once selected, uploads a valid
random upload of the true size, echoing the round's nonce. They are plain paho clients driven by one
selector loop in one thread (paho's external-loop API: ``loop_read`` / ``loop_write`` / ``loop_misc``),
not ``loop_start``'s network thread per client: on 2 shared cores, 1,000 threads each waking in its own
``select`` would measure the bench's scheduling more than the aggregator. ``connections`` = N gives one
real MQTT connection per client; fewer multiplex the ids over that many connections.

The aggregator runs in its own process (spawned) with a sampler thread recording its resident memory;
the broker is started per run (``max_connections -1``, the bench's file-descriptor limit raised to the
hard limit and inherited), so its peak memory (VmHWM) belongs to that run alone.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import resource
import selectors
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

from fedmekt.transport.broker import free_port, start_mosquitto
from fedmekt.config import FederationConfig
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import encode
from fedmekt.wire.topics import Topics
from sensors.datasets import load_dataset
from sensors.splits import make_split

WINDOW = 32  # unacknowledged publishes per connection, as MqttLink.publish_all


def proc_memory_mib(pid: int | str = "self") -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if line.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) / 1024 for k, v in fields.items()}


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files_limit(pid: int | str = "self") -> str:
    with open(f"/proc/{pid}/limits") as fh:
        return next(" / ".join(line.split()[3:5]) for line in fh if line.startswith("Max open files"))


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children, the broker included, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def many_config(n: int) -> FederationConfig:
    return FederationConfig(federation=f"many{n}", dataset="demo", clients=(0, 0, n), per_round=n, rounds=1,
                            proxy_windows=16, device="cpu")


def token_split(cfg: FederationConfig):
    """A split whose server side is the real one but with two token clients: N does not change its size."""
    return make_split(load_dataset("demo"), cfg.pair, seed=cfg.seed, clients=(0, 0, 2))


@dataclass
class ManyResult:
    n: int
    connections: int
    connect_s: float  # every connection's CONNACK
    presence_s: float  # every id's "online" acknowledged by the broker
    upload_s: float  # announcement seen -> every upload acknowledged by the broker
    round_s: float  # the aggregator's round wall time (plan, announce, absorb every upload, finish)
    absorbed_s: float  # round start -> last upload folded into the running mean
    absorbed: int
    rejected: int
    agg_start_mib: float  # aggregator RSS when the round starts (N clients known)
    agg_peak_mib: float  # its peak RSS during the round
    agg_hwm_mib: float  # its VmHWM over its whole life
    inbox_peak: int  # most messages waiting in its link's inbox
    broker_hwm_mib: float
    broker_rss_mib: float
    broker_fd_limit: str


# ---- the aggregator's process ----------------------------------------------------------------------
def _aggregator_child(url: str, n: int, out: str, conn) -> None:
    """One aggregator round; a sampler thread records its resident memory during the round."""
    from aggregator.service import Aggregator, AggregatorOptions

    cfg = many_config(n)
    split = dataclasses.replace(token_split(cfg), clients=[])  # the server holds no client data
    agg = Aggregator(cfg, split, url, AggregatorOptions(out=Path(out), wait_clients=n, progress=False,
                                                        round_timeout=600))
    mem = {"start": 0.0, "peak": 0.0, "inbox": 0}
    times = {"start": 0.0, "absorbed": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            mem["peak"] = max(mem["peak"], proc_memory_mib()["VmRSS"])
            mem["inbox"] = max(mem["inbox"], agg.link.pending)  # received, not yet handled (bounded by count)

    def before(rnd, a) -> None:
        mem["start"] = mem["peak"] = proc_memory_mib()["VmRSS"]
        threading.Thread(target=sample, daemon=True).start()
        times["start"] = time.perf_counter()
        absorb = a.server.absorb

        def timed_absorb(*args, **kwargs):  # when the last upload was folded in: the round's transport part
            absorb(*args, **kwargs)
            times["absorbed"] = time.perf_counter()

        a.server.absorb = timed_absorb
        a.server.final_evaluation = lambda: {}  # one round only: the final probe is not what is measured

    agg.before_round = before
    result = agg.run()
    done.set()
    row = result.rows[0]
    conn.send({"wall_s": row["wall_s"], "absorbed": row["absorbed"], "rejected": row["rejected"],
               "absorbed_s": times["absorbed"] - times["start"], "rss_start_mib": mem["start"],
               "rss_peak_mib": mem["peak"], "inbox_peak": mem["inbox"], "hwm_mib": proc_memory_mib()["VmHWM"]})


# ---- many clients, one loop ------------------------------------------------------------------------
@dataclass
class _Conn:
    client: paho.Client
    connected: bool = False
    inflight: int = 0
    items: Iterator[tuple[str, bytes, bool]] | None = None


class Swarm:
    """``count`` MQTT connections (v5, QoS 1) served by one selector loop in the calling thread."""

    def __init__(self, host: str, port: int, client_ids: list[str]):
        self.host, self.port = host, port
        self._sel = selectors.DefaultSelector()
        self.conns = [self._make(cid) for cid in client_ids]
        self._misc_at = 0.0

    def _make(self, cid: str) -> _Conn:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5)
        conn = _Conn(c)
        c.max_inflight_messages_set(WINDOW)

        def on_connect(client, userdata, flags, reason_code, properties) -> None:
            if reason_code.is_failure:
                raise RuntimeError(f"{cid}: broker refused the connection: {reason_code}")
            conn.connected = True

        def on_publish(client, userdata, mid, reason_code, properties) -> None:
            conn.inflight -= 1

        c.on_connect, c.on_publish = on_connect, on_publish
        return conn

    def connect(self, batch: int = 50, timeout: float = 300.0) -> None:
        """Open the connections ``batch`` at a time (the broker's listen backlog), each waited for its CONNACK."""
        deadline = time.monotonic() + timeout
        for start in range(0, len(self.conns), batch):
            group = self.conns[start:start + batch]
            for conn in group:
                conn.client.connect(self.host, self.port, keepalive=120)
                self._sel.register(conn.client.socket(), selectors.EVENT_READ, conn)
            while not all(c.connected for c in group):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{sum(c.connected for c in self.conns)} of {len(self.conns)} connected")
                self._pump(0.05)

    def send(self, items: list[Iterator[tuple[str, bytes, bool]]], timeout: float = 900.0) -> None:
        """Publish each connection's items (topic, payload, retain), ``WINDOW`` unacknowledged at a time; return
        once the broker acknowledged them all."""
        for conn, it in zip(self.conns, items):
            conn.items = it
        deadline = time.monotonic() + timeout
        while True:
            busy = False
            for conn in self.conns:
                while conn.items is not None and conn.inflight < WINDOW:
                    item = next(conn.items, None)
                    if item is None:
                        conn.items = None
                        break
                    topic, payload, retain = item
                    conn.client.publish(topic, payload, qos=1, retain=retain)
                    conn.inflight += 1
                busy |= conn.items is not None or conn.inflight > 0
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("uploads not acknowledged in time")
            self._pump(0.01)

    def _pump(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            rc = key.data.client.loop_read(64)
            if rc != paho.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"connection {key.data.client._client_id!r} lost: {rc}")
        for conn in self.conns:
            if conn.client.want_write():
                conn.client.loop_write()
        now = time.monotonic()
        if now >= self._misc_at:  # keepalive pings
            for conn in self.conns:
                conn.client.loop_misc()
            self._misc_at = now + 1.0

    def close(self) -> None:
        for conn in self.conns:
            conn.client.disconnect()
            conn.client.loop_write()
        self._sel.close()


def _wait_for(monitor: MqttLink, topic: str, accept, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = monitor.get(timeout=0.2)
        if msg is not None and msg.topic == topic and msg.payload:
            got = accept(msg.payload)
            if got is not None:
                return got
    raise TimeoutError(f"no {what} within {timeout:.0f} s")


def _announced_plan(payload: bytes):
    ann = fedwire.Announcement.from_bytes(payload)
    return None if ann.done else ann


def _upload_spec(cfg: FederationConfig, plan) -> dict:
    """Shapes and dtypes the aggregator expects from an A+B client in this round."""
    from fedmekt.learn.engine import ServerEngine

    split = token_split(cfg)
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled)
    return server.expected_upload(cfg.pair, plan)


def one_round(n: int, connections: int) -> ManyResult:
    """A fresh broker, the aggregator in its own process, ``n`` ids over ``connections`` connections, one round."""
    ids = [f"c{i:05d}" for i in range(n)]
    conn_ids = ids if connections >= n else [f"light{k:03d}" for k in range(connections)]
    port = free_port()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_mosquitto(port, listener=f"listener {port} 127.0.0.1\nmax_connections -1\n"
                                                f"allow_anonymous true\n")
        proc = ctx.Process(target=_aggregator_child, args=(broker.url, n, tmp, child))
        proc.start()
        try:
            timings = _drive(broker.url, n, ids, conn_ids)
            deadline = time.monotonic() + 900
            while not parent.poll(0.5) and proc.is_alive() and time.monotonic() < deadline:
                pass
            got = parent.recv() if parent.poll() else None
            proc.join(timeout=60)
            broker_mem, fd_limit = proc_memory_mib(broker.process.pid), open_files_limit(broker.process.pid)
        finally:
            if proc.is_alive():
                proc.terminate()
            broker.stop()
    if got is None:
        raise RuntimeError(f"N={n}: the aggregator returned no result")
    return ManyResult(n, len(conn_ids), *timings, got["wall_s"], got["absorbed_s"], got["absorbed"], got["rejected"],
                      got["rss_start_mib"], got["rss_peak_mib"], got["hwm_mib"], got["inbox_peak"],
                      broker_mem["VmHWM"], broker_mem["VmRSS"], fd_limit)


def _drive(url: str, n: int, ids: list[str], conn_ids: list[str]) -> tuple[float, float, float]:
    """The clients' side of the round: connect, presence, wait for the plan, uploads; their three timings."""
    cfg = many_config(n)
    topics = Topics(cfg.federation)
    monitor = MqttLink(url, LinkOptions(client_id="many-monitor"),
                       subscriptions=[topics.liveness, topics.rounds]).connect()
    address = monitor.address
    swarm = Swarm(address.host, address.port, conn_ids)
    try:
        t0 = time.perf_counter()
        swarm.connect()
        connect_s = time.perf_counter() - t0
        # its liveness challenge (published after its manifest) means the aggregator is subscribed: our presence,
        # echoing the challenge, reaches it live
        challenge = _wait_for(monitor, topics.liveness, fedwire.LivenessChallenge.from_bytes, 300,
                              "liveness challenge from the aggregator")
        online = fedwire.Status("online", cfg.pair, proof=challenge.nonce).to_bytes()
        share = [ids[k::len(conn_ids)] for k in range(len(conn_ids))]
        t0 = time.perf_counter()
        swarm.send([iter([(topics.status(cid), online, True) for cid in mine]) for mine in share])
        presence_s = time.perf_counter() - t0
        ann = _wait_for(monitor, topics.rounds, _announced_plan, 600, "round announcement")
        plan = ann.round_plan()
        rng = np.random.default_rng(0)
        spec = _upload_spec(cfg, plan)
        tensors = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in spec.items()}

        def uploads(mine: list[str]) -> Iterator[tuple[str, bytes, bool]]:
            for cid in mine:
                frames = encode(tensors, federation=cfg.federation, round_=plan.round, sender=cid, kind="upload",
                                modalities=cfg.pair, nonce=ann.nonce)
                yield from ((topics.upload_chunk(cid, plan.round, i), f, False) for i, f in enumerate(frames))

        t0 = time.perf_counter()
        swarm.send([uploads(mine) for mine in share])
        return connect_s, presence_s, time.perf_counter() - t0
    finally:
        swarm.close()
        monitor.close()
