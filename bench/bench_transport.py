"""Transport benchmark: what MQTT costs on top of the in-process federation.

(a) round overhead of ``simulate`` (aggregator and 9 clients as threads, each its own MQTT connection,
    through mosquitto) against the in-process runner on the same config (UR Fall acce-depth, mmFedAvg,
    3/3/3 clients, all 9 per round, 10 rounds): per-round time of the later rounds (from round 2 on, when
    start-up is over), the difference in ms and the ratio, goal <= 1.05x (<= 30 ms per round), and the totals;
(d) the same for separate processes: ``fedmekt aggregator`` + 9 x ``fedmekt client``, started as the
    process tests start them (tests/federation_harness.py), with Flower 1.42's figures quoted beside;
(b) bytes per round per algorithm counted by a subscriber on every topic vs the accounted sizes
    (the in-process runner's ``message_bytes``) and vs the raw tensor bytes (framing goal <= 2 %);
(c) one round with N lightweight clients (no training: each uploads a valid, random upload of the
    true size) through a private mosquitto: 1,000 real MQTT connections, one per client, and 100 /
    1,000 / 10,000 ids multiplexed over 50 connections; round time, the aggregator's and the broker's
    memory, the aggregator's against the goal "flat in N" (bench/transport_many.py).

Per-round times: in process, the runner's own round time; through the broker, the interval between
two rounds' metrics messages as a subscriber receives them (so checkpoints and the wait between rounds
count too). The fastest later round of each runner is compared (background load only adds time),
with the median beside, and the CPU time every party used per later round (work added, waits
excluded). (a) and (d) run pinned to one core, broker included (``--cpus`` to change), so that neither
gains from training its clients in parallel where the in-process runner trains them one after another:
what remains is the orchestration. The machine is shared, so the runs alternate; under others' load,
10 processes (each its own session, so its own scheduler group) get more of the core than one
in-process runner does, which flatters (d)'s wall time (not its CPU time).

Run: .venv/bin/python bench/bench_transport.py [--quick] [--only a|b|c|d]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the process federation the tests start (federation_harness)
from fedmekt import device_classes  # noqa: E402
from fedmekt.transport.broker import start_mosquitto  # noqa: E402
from fedmekt.config import WIDTH_SLICED, FederationConfig  # noqa: E402
from fedmekt.experiment.in_process import run_inprocess  # noqa: E402
from fedmekt.transport.mqtt import LinkOptions, MqttLink  # noqa: E402
from fedmekt.wire.topics import Topics  # noqa: E402
from fedmekt_cli.simulation import run_simulation  # noqa: E402
from transport_many import cpu_seconds  # noqa: E402
from sensors.datasets import dataset_info, load_dataset  # noqa: E402
from sensors.splits import make_split  # noqa: E402

ALGORITHMS = ("fedmekt-c", "fedmekt-s", "mmfedavg", "mmfedprox", "mmmoon", "heterofl")
OVERHEAD_GOAL, ROUND_MS_GOAL, FRAMING_GOAL, FLAT_GOAL = 1.05, 30.0, 0.02, 1.10
LATER = 2  # rounds before this one include start-up (proxy set, first training) and are not compared
LEARNING_SKIP = {"wall_s", "bytes_up", "bytes_down", "bytes_global", "bytes_proxy_once", "rejected", "late"}
FLOWER = (
    "    Flower 1.42, QUOTED from measurements made earlier on this machine the same way (issue 14), not re-measured "
    "here:",
    "      simulation engine: later rounds level with in-process (ratio ~1.0), after an 18 s start;",
    "      deployment engine: 76 s per round, because it starts a fresh client process every round.")


# ---- shared --------------------------------------------------------------------------------------
def demo_split(cfg: FederationConfig, clients: tuple[int, int, int] | None = None):
    return make_split(load_dataset("demo"), cfg.pair, seed=cfg.seed, clients=clients or cfg.clients)


def simulate(cfg, split, url):
    with tempfile.TemporaryDirectory() as tmp:
        return run_simulation(cfg, split, url=url, out=Path(tmp) / "out", workdir=Path(tmp) / "dev",
                              progress=False, rate_hz=dataset_info(cfg.dataset).rate_hz)


def same_learning(a: list[dict], b: list[dict]) -> bool:
    strip = lambda rows: [{k: v for k, v in r.items() if k not in LEARNING_SKIP} for r in rows]  # noqa: E731
    return strip(a) == strip(b)


# ---- (a) and (d): round overhead -------------------------------------------------------------------
@dataclasses.dataclass
class Timed:
    """One runner's run: per-round seconds of the later rounds, total wall time, and what else it reports."""

    per_round: dict[int, float]
    total_s: float
    cpu_s: float  # CPU seconds per later round, every party (threads, processes, broker) together
    equal: bool = True
    inside: dict[int, float] = dataclasses.field(default_factory=dict)  # the aggregator's own round time
    startup_s: float = 0.0  # start -> round 0 begins


def overhead_config(rounds: int) -> FederationConfig:
    return FederationConfig(federation="overhead", dataset="ur_fall", pair=dataset_info("ur_fall").default_pair,
                            algorithm="mmfedavg", clients=(3, 3, 3), per_round=9, rounds=rounds, device="cpu")


def _later(rows: list[dict]) -> dict[int, float]:
    return {r["round"]: r["wall_s"] for r in rows if r["round"] >= LATER}


def _cpu_per_round(cpu: dict[int, float], rounds: int) -> float:
    """CPU seconds from round LATER-1's metrics to the last round's, per round (nan when one was not sampled)."""
    if rounds - 1 not in cpu or LATER - 1 not in cpu:
        return float("nan")
    return (cpu[rounds - 1] - cpu[LATER - 1]) / (rounds - LATER)


def _periods(arrivals: dict[int, float]) -> dict[int, float]:
    """Seconds between round k-1's and round k's metrics reaching a subscriber, for the later rounds."""
    return {k: t - arrivals[k - 1] for k, t in sorted(arrivals.items()) if k >= LATER and k - 1 in arrivals}


class MetricsClock:
    """When each round's metrics message reaches a subscriber on the broker, and the CPU time the parties
    (``pids``, this process included) had used by then."""

    def __init__(self, url: str, federation: str, pids: tuple[int | str, ...]):
        self.arrivals: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.pids = pids
        self._link = MqttLink(url, LinkOptions(client_id=f"metrics-clock-{time.monotonic_ns()}"),
                              subscriptions=[Topics(federation).metrics]).connect()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            msg = self._link.get(timeout=0.1)
            if msg is not None and msg.payload and not msg.retain:
                rnd = json.loads(msg.payload)["round"]
                if rnd not in self.arrivals:
                    self.arrivals[rnd] = time.perf_counter()
                    try:
                        self.cpu[rnd] = sum(cpu_seconds(p) for p in self.pids)
                    except FileNotFoundError:  # a party already gone (after the last round)
                        pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._link.close()


def time_inprocess(cfg, split) -> tuple[Timed, list[dict]]:
    """The runner alone; its CPU clock is read where each round starts and where the final evaluation does."""
    from unittest import mock

    import fedmekt.experiment.in_process

    marks: list[float] = []

    class ClockedServer(fedmekt.experiment.in_process.ServerEngine):
        def plan_round(self, *args, **kwargs):
            marks.append(time.process_time())
            return super().plan_round(*args, **kwargs)

        def final_evaluation(self, *args, **kwargs):
            marks.append(time.process_time())
            return super().final_evaluation(*args, **kwargs)

    t0 = time.perf_counter()
    with mock.patch.object(fedmekt.experiment.in_process, "ServerEngine", ClockedServer):
        ref = run_inprocess(cfg, split, progress=False)
    cpu_per_round = (marks[cfg.rounds] - marks[LATER]) / (cfg.rounds - LATER)
    return Timed(_later(ref.rows), time.perf_counter() - t0, cpu_per_round), ref.rows


def time_simulate(cfg, split, url, ref_rows, broker_pid: int) -> Timed:
    clock = MetricsClock(url, cfg.federation, ("self", broker_pid))
    try:
        sim = simulate(cfg, split, url)
    finally:
        clock.close()
    return Timed(_periods(clock.arrivals), sim.wall_s, _cpu_per_round(clock.cpu, cfg.rounds),
                 same_learning(ref_rows, sim.result.rows), _later(sim.result.rows))


def _config_toml(cfg: FederationConfig) -> str:
    keys = ("federation", "dataset", "pair", "algorithm", "clients", "per_round", "rounds", "seed", "device")
    return "".join(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}\n"
                   for k, v in ((k, getattr(cfg, k)) for k in keys))


def time_processes(cfg, ref_rows) -> Timed:
    """``fedmekt aggregator`` and one ``fedmekt client`` per client id, each its own process, as the tests run them."""
    from federation_harness import ProcessFederation

    with tempfile.TemporaryDirectory() as tmp:
        fed = ProcessFederation(Path(tmp), rounds=cfg.rounds, clients=cfg.clients, per_round=cfg.per_round,
                                round_timeout=300, federation=cfg.federation, seed=cfg.seed)
        try:
            fed.config.write_text(_config_toml(cfg))  # the harness writes a demo config; this one is ours
            t0 = time.perf_counter()
            fed.start_aggregator()
            for cid in fed.client_ids:
                fed.start_client(cid)
            clock = MetricsClock(fed.url, cfg.federation, (fed.broker.process.pid,
                                                           *(p.pid for p in fed.procs.values())))
            try:
                fed.run_to_end(timeout=600 + 60 * cfg.rounds)
            finally:
                clock.close()
            total = time.perf_counter() - t0
            rows = list({r["round"]: r for r in fed.metrics()}.values())
        finally:
            fed.close()
    return Timed(_periods(clock.arrivals), total, _cpu_per_round(clock.cpu, cfg.rounds),
                 same_learning(ref_rows, rows), _later(rows), clock.arrivals[0] - t0 - rows[0]["wall_s"])


def _verdict(ratio: float, diff_ms: float) -> str:
    met = ratio <= OVERHEAD_GOAL and diff_ms <= ROUND_MS_GOAL
    return f"goal <= {OVERHEAD_GOAL}x and <= {ROUND_MS_GOAL:.0f} ms/round: {'met' if met else 'NOT met'}"


def _totals(runs: list[Timed]) -> str:
    return ", ".join(f"{t.total_s:.1f}" for t in runs) + " s"


def bench_overhead(url: str, broker_pid: int, rounds: int, repeats: int, parts: set[str]) -> None:
    """In-process, ``simulate`` and separate processes alternate ``repeats`` times; the best run of each is kept."""
    cfg = overhead_config(rounds)
    split = make_split(load_dataset(cfg.dataset), cfg.pair, scheme=cfg.partition, seed=cfg.seed, clients=cfg.clients)
    runs: dict[str, list[Timed]] = {"in process": [], "simulate": [], "processes": []}
    load = os.getloadavg()[0]
    for _ in range(repeats):
        ref, rows = time_inprocess(cfg, split)
        runs["in process"].append(ref)
        if "a" in parts:
            runs["simulate"].append(time_simulate(cfg, split, url, rows, broker_pid))
        if "d" in parts:
            runs["processes"].append(time_processes(cfg, rows))
    fast = {name: min(min(t.per_round.values()) for t in r) for name, r in runs.items() if r}
    mid = {name: statistics.median([v for t in r for v in t.per_round.values()]) for name, r in runs.items() if r}
    cpu = {name: min(t.cpu_s for t in r) for name, r in runs.items() if r}
    print(f"(a)/(d) round overhead, {cfg.dataset} {'-'.join(cfg.pair)}, {cfg.algorithm}, {cfg.clients} clients, "
          f"{cfg.per_round}/round, {rounds} rounds, {repeats} run(s) each, alternating; rounds {LATER}..{rounds - 1}: "
          f"fastest / median per round; on cores {sorted(os.sched_getaffinity(0))}, load average {load:.1f} on "
          f"{os.cpu_count()} cores at the start")
    print(f"    in process                          {fast['in process'] * 1e3:5.0f} / {mid['in process'] * 1e3:5.0f} ms"
          f"   CPU {cpu['in process'] * 1e3:5.0f} ms/round   total {_totals(runs['in process'])}")
    labels = {"simulate": "(a) simulate: threads, mosquitto   ",
              "processes": "(d) aggregator + 9 client processes"}
    for name in ("simulate", "processes"):
        if not runs[name]:
            continue
        ratio, diff = fast[name] / fast["in process"], (fast[name] - fast["in process"]) * 1e3
        print(f"    {labels[name]} {fast[name] * 1e3:5.0f} / {mid[name] * 1e3:5.0f} ms   CPU {cpu[name] * 1e3:5.0f} "
              f"ms/round   total {_totals(runs[name])}")
        print(f"        fastest round {diff:+.0f} ms, ratio {ratio:.3f} ({_verdict(ratio, diff)}); median ratio "
              f"{mid[name] / mid['in process']:.3f}; CPU of every party, broker included, "
              f"{(cpu[name] - cpu['in process']) * 1e3:+.0f} ms/round ({cpu[name] / cpu['in process']:.3f}x)")
        inside = statistics.median([v for t in runs[name] for v in t.inside.values()])
        extra = f"; start-up before round 0 {min(t.startup_s for t in runs[name]):.1f} s" \
            if name == "processes" else ""
        print(f"        median round inside the aggregator {inside * 1e3:.0f} ms, so between rounds "
              f"{(mid[name] - inside) * 1e3:.0f} ms{extra}; metrics equal to in process: "
              f"{all(t.equal for t in runs[name])}")
    print(f"    one crash-safe write (write, fsync, rename, fsync the folder) on this disk: {_durable_write_ms():.1f} "
          f"ms (median of 9); per round the aggregator makes 2 (metrics, checkpoint), each client 2 (state, upload), "
          f"in process none")
    print("\n".join(FLOWER))


def _durable_write_ms(size: int = 200_000) -> float:
    from fedmekt.artifacts import atomic_write_bytes

    payload, took = os.urandom(size), []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(9):
            t0 = time.perf_counter()
            atomic_write_bytes(Path(tmp) / "state", payload)
            took.append(time.perf_counter() - t0)
    return statistics.median(took) * 1e3


# ---- (b) bytes on the wire -----------------------------------------------------------------------
def bench_bytes(url: str, rounds: int, algorithms: tuple[str, ...] = ALGORITHMS) -> None:
    print(f"(b) bytes per round (mean over {rounds} rounds), demo (2,2,2) clients, 6/round, float32")
    print(f"    {'algorithm':<10} {'raw tensors':>12} {'accounted':>12} {'on the wire':>12} {'wire/acc':>9} "
          f"{'wire/raw':>9}   direction")
    for algo in algorithms:   # heterofl runs its mixed fleet (each class uploads its own slice)
        cfg = FederationConfig(dataset="demo", clients=(2, 2, 2), per_round=6, rounds=rounds, algorithm=algo,
                               device="cpu", fleet="mixed" if algo in WIDTH_SLICED else "standard")
        split = demo_split(cfg)
        ref = run_inprocess(cfg, split, progress=False)
        sim = simulate(cfg, split, url)
        raw_up = _raw_upload_bytes(cfg, split)
        for direction, acc_key, wire_key, raw in (("up", "bytes_up", "upload", raw_up),
                                                  ("down", "bytes_global", "global", None)):
            acc = np.mean([r[acc_key] for r in ref.rows])
            wire = sim.wire["packet_bytes"].get(wire_key, 0) / rounds
            raw_txt = f"{raw:12.0f}" if raw else f"{'':>12}"
            over_raw = f"{wire / raw - 1:+9.2%}" if raw else f"{'':>9}"
            flag = "ok" if wire / acc - 1 <= FRAMING_GOAL else "OVER"
            print(f"    {algo:<10} {raw_txt} {acc:12.0f} {wire:12.0f} {wire / acc - 1:+9.2%} {over_raw}   "
                  f"{direction} ({flag}; goal <= {FRAMING_GOAL:.0%})")


def _raw_upload_bytes(cfg, split) -> float:
    """Mean raw tensor bytes (numel x 4) of the selected clients' uploads, from the engine's upload spec."""
    from fedmekt.learn.engine import ServerEngine

    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled)
    mods = {c.client_id: c.modalities for c in split.clients}
    classes = device_classes.assign(cfg.fleet, sorted(mods))
    total = 0
    for rnd in range(cfg.rounds):
        plan = server.plan_round(rnd, sorted(mods))
        for cid in plan.selected:
            spec = server.expected_upload(mods[cid], plan, classes[cid])
            total += sum(int(np.prod(s)) * 4 for s, _ in spec.values())
    return total / cfg.rounds


# ---- (c) many lightweight clients ----------------------------------------------------------------
def bench_many(runs: tuple[tuple[int, int], ...]) -> None:
    from transport_many import one_round, raise_fd_limit

    hard = raise_fd_limit()
    print(f"(c) one round, N lightweight clients (valid random uploads of the true size, demo A+B, 16 proxy "
          f"windows), a private mosquitto (max_connections -1, open files {hard}), aggregator in its own process")
    print(f"    {'N':>6} {'conns':>6} {'connect':>8} {'online':>7} {'uploads':>8} {'absorbed':>9} {'round':>7}"
          f" {'ok':>6}   {'aggregator RSS start / peak / VmHWM':>36} {'inbox':>6}   {'broker VmHWM / VmRSS':>20}")
    done = []
    for n, connections in runs:
        r = one_round(n, connections)
        done.append(r)
        print(f"    {r.n:6d} {r.connections:6d} {r.connect_s:7.2f}s {r.presence_s:6.2f}s {r.upload_s:7.2f}s "
              f"{r.absorbed_s:8.2f}s {r.round_s:6.2f}s {r.absorbed:6d}   {r.agg_start_mib:9.0f} / "
              f"{r.agg_peak_mib:5.0f} / {r.agg_hwm_mib:5.0f} MiB (+{r.agg_peak_mib - r.agg_start_mib:3.0f}) "
              f"{r.inbox_peak:6d}   "
              f"{r.broker_hwm_mib:8.0f} / {r.broker_rss_mib:5.0f} MiB"
              + (f"   (rejected {r.rejected})" if r.rejected else ""))
    print("    connect: every CONNACK; online: every id's presence acknowledged; uploads: announcement -> every upload "
          "acknowledged by the broker; absorbed: round start -> last upload in the mean; round: the aggregator's; "
          "inbox: most messages received and waiting in the aggregator's link")
    multiplexed = sorted((r for r in done if r.connections < r.n), key=lambda r: r.n)
    if len(multiplexed) > 1:
        first = multiplexed[0]
        cells = ", ".join(f"N={r.n}: {r.agg_peak_mib:.0f} MiB ({r.agg_peak_mib / first.agg_peak_mib:.2f}x)"
                          for r in multiplexed)
        worst = max(r.agg_peak_mib / first.agg_peak_mib for r in multiplexed)
        print(f"    aggregator peak RSS in the round, multiplexed: {cells}; goal flat in N (<= {FLAT_GOAL:.2f}x of "
              f"N={first.n}): {'met' if worst <= FLAT_GOAL else 'NOT met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 rounds once, (b) 2 algorithms over 1 round, (c) N = 100 multiplexed and "
                        "300 connections")
    p.add_argument("--only", choices=("a", "b", "c", "d"), action="append", help="run only these parts")
    p.add_argument("--cpus", default="", help="cores (a) and (d) run on, comma-separated (default: one core)")
    args = p.parse_args()
    parts = set(args.only or "abcd")
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")} if args.cpus else {max(allowed)})
    broker = start_mosquitto()
    try:
        if parts & {"a", "d"}:
            bench_overhead(broker.url, broker.process.pid, rounds=3 if args.quick else 10,
                           repeats=1 if args.quick else 2, parts=parts)
        os.sched_setaffinity(0, allowed)
        if "b" in parts:
            bench_bytes(broker.url, rounds=1, algorithms=("fedmekt-c", "mmfedavg")) if args.quick else \
                bench_bytes(broker.url, rounds=2)
    finally:
        broker.stop()
    if "c" in parts:
        bench_many(((100, 50), (300, 300)) if args.quick else
                   ((100, 50), (1000, 50), (10000, 50), (1000, 1000)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
