"""Transport benchmark: what MQTT costs on top of the in-process federation.

(a) overhead = wall time of ``simulate`` through mosquitto / wall time of ``reproduce``'s runner, same
    config (goal <= 1.15);
(b) bytes per round per algorithm counted by a subscriber on every topic vs the accounted sizes
    (the in-process runner's ``message_bytes``) and vs the raw tensor bytes (framing goal <= 2 %);
(c) one round with N lightweight clients (no training: each uploads a valid, random upload of the
    true size) through mosquitto: round wall time and the aggregator's peak memory, N = 100 and 1000.

Run: .venv/bin/python bench/bench_transport.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fedmekt.broker import start_mosquitto  # noqa: E402
from fedmekt.config import FederationConfig  # noqa: E402
from fedmekt.federation import run_inprocess  # noqa: E402
from fedmekt_cli.simulation import run_simulation  # noqa: E402
from sensors.datasets import dataset_info, load_dataset  # noqa: E402
from sensors.splits import make_split  # noqa: E402

ALGORITHMS = ("fedmekt-c", "fedmekt-s", "mmfedavg", "mmfedprox", "mmmoon")
OVERHEAD_GOAL, FRAMING_GOAL = 1.15, 0.02
LEARNING_SKIP = {"wall_s", "bytes_up", "bytes_down", "bytes_global", "bytes_proxy_once", "rejected", "late"}


def demo_split(cfg: FederationConfig, clients: tuple[int, int, int] | None = None):
    return make_split(load_dataset("demo"), cfg.pair, seed=cfg.seed, clients=clients or cfg.clients)


def simulate(cfg, split, url):
    with tempfile.TemporaryDirectory() as tmp:
        return run_simulation(cfg, split, url=url, out=Path(tmp) / "out", workdir=Path(tmp) / "dev",
                              progress=False, rate_hz=dataset_info("demo").rate_hz)


def same_learning(a: list[dict], b: list[dict]) -> bool:
    strip = lambda rows: [{k: v for k, v in r.items() if k not in LEARNING_SKIP} for r in rows]  # noqa: E731
    return strip(a) == strip(b)


def bench_overhead(url: str, rounds: int, repeats: int = 2) -> None:
    """Alternate the two runners ``repeats`` times and compare the fastest of each (the machine is shared)."""
    cfg = FederationConfig(dataset="demo", clients=(3, 3, 3), per_round=6, rounds=rounds, proxy_windows=32,
                           device="cpu")
    split = demo_split(cfg)
    t_ref, t_sim, equal = [], [], True
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = run_inprocess(cfg, split, progress=False)
        t_ref.append(time.perf_counter() - t0)
        sim = simulate(cfg, split, url)
        t_sim.append(sim.wall_s)
        equal &= same_learning(ref.rows, sim.result.rows)
    ratio = min(t_sim) / min(t_ref)
    print(f"(a) transport overhead, demo {cfg.clients} clients, {cfg.per_round}/round, {rounds} rounds, fedmekt-c, "
          f"best of {repeats}")
    print(f"    reproduce {min(t_ref):6.1f} s {[round(t, 1) for t in t_ref]}   simulate via mosquitto "
          f"{min(t_sim):6.1f} s {[round(t, 1) for t in t_sim]}   ratio {ratio:.3f} "
          f"(goal <= {OVERHEAD_GOAL}: {'met' if ratio <= OVERHEAD_GOAL else 'NOT met'}); metrics equal: {equal}")


def bench_bytes(url: str, rounds: int) -> None:
    print(f"(b) bytes per round (mean over {rounds} rounds), demo (2,2,2) clients, 6/round, float32")
    print(f"    {'algorithm':<10} {'raw tensors':>12} {'accounted':>12} {'on the wire':>12} {'wire/acc':>9} "
          f"{'wire/raw':>9}   direction")
    for algo in ALGORITHMS:
        cfg = FederationConfig(dataset="demo", clients=(2, 2, 2), per_round=6, rounds=rounds, algorithm=algo,
                               device="cpu")
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
    from fedmekt.engine import ServerEngine

    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled)
    mods = {c.client_id: c.modalities for c in split.clients}
    total = 0
    for rnd in range(cfg.rounds):
        plan = server.plan_round(rnd, sorted(mods))
        for cid in plan.selected:
            total += sum(int(np.prod(s)) * 4 for s, _ in server.expected_upload(mods[cid], plan).values())
    return total / cfg.rounds


# ---- (c) many lightweight clients ----------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1e3


def _aggregator_child(url: str, n: int, out: str, conn) -> None:
    """One aggregator round in its own process; a sampler thread records its resident memory."""
    from aggregator.service import Aggregator, AggregatorOptions

    cfg = _many_config(n)
    # the server holds no client data: split with a token client pool so N does not change its baseline memory
    split = dataclasses.replace(demo_split(cfg, clients=(0, 0, 2)), clients=[])
    agg = Aggregator(cfg, split, url, AggregatorOptions(out=Path(out), wait_clients=n, progress=False,
                                                        round_timeout=600))
    mem = {"start": 0.0, "peak": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            mem["peak"] = max(mem["peak"], _rss_mb())

    def before(rnd, a) -> None:
        mem["start"] = mem["peak"] = _rss_mb()
        threading.Thread(target=sample, daemon=True).start()

    agg.before_round = before
    agg._final_evaluation = lambda: {}  # one round only: the final probe is not what is measured
    result = agg.run()
    done.set()
    row = result.rows[0]
    conn.send({"wall_s": row["wall_s"], "absorbed": row["absorbed"], "rejected": row["rejected"],
               "rss_start_mb": mem["start"], "rss_peak_mb": mem["peak"]})


def _many_config(n: int) -> FederationConfig:
    return FederationConfig(federation=f"many{n}", dataset="demo", clients=(0, 0, n), per_round=n, rounds=1,
                            proxy_windows=16, device="cpu")


def _lightweight_clients(url: str, n: int, connections: int, stop: threading.Event) -> None:
    """``n`` client ids over ``connections`` MQTT connections: presence, then one valid upload each when selected."""
    from fedmekt.engine import ServerEngine
    from fedmekt.mqtt import LinkOptions, MqttLink
    from fedmekt.wire import federation as fedwire
    from fedmekt.wire.codec import encode
    from fedmekt.wire.topics import Topics

    cfg = _many_config(n)
    split = demo_split(cfg, clients=(0, 0, 2))
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled)
    topics = Topics(cfg.federation)
    ids = [f"c{i:04d}" for i in range(n)]
    links = [MqttLink(url, LinkOptions(client_id=f"light{k}"), subscriptions=[topics.rounds]).connect()
             for k in range(connections)]
    for k, link in enumerate(links):
        link.publish_all(((topics.status(cid), fedwire.Status("online", cfg.pair).to_bytes())
                          for cid in ids[k::connections]), retain=True)
    plan = None
    while plan is None and not stop.is_set():
        msg = links[0].get(timeout=0.2)
        if msg is not None and msg.payload:
            ann = fedwire.Announcement.from_bytes(msg.payload)
            plan = None if ann.done else ann.round_plan()
    if plan is None:
        return
    rng = np.random.default_rng(0)
    spec = server.expected_upload(cfg.pair, plan)
    tensors = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in spec.items()}

    def send(k: int) -> None:
        for cid in ids[k::connections]:
            frames = encode(tensors, federation=cfg.federation, round_=plan.round, sender=cid, kind="upload",
                            modalities=cfg.pair)
            links[k].publish_all((topics.upload_chunk(cid, plan.round, i), f) for i, f in enumerate(frames))

    threads = [threading.Thread(target=send, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for link in links:
        link.close(announce_offline=False)


def bench_many(url: str, sizes: tuple[int, ...], connections: int) -> None:
    print(f"(c) one round, N lightweight clients over {connections} MQTT connections, uploads of the true size "
          f"(demo A+B clients, 16 proxy windows), aggregator in its own process")
    ctx = mp.get_context("spawn")
    for n in sizes:
        parent, child = ctx.Pipe()
        with tempfile.TemporaryDirectory() as tmp:
            proc = ctx.Process(target=_aggregator_child, args=(url, n, tmp, child))
            proc.start()
            stop = threading.Event()
            _lightweight_clients(url, n, connections, stop)
            got = parent.recv() if parent.poll(900) else None
            proc.join(timeout=60)
        if got is None:
            print(f"    N={n}: no result")
            continue
        print(f"    N={n:5d}: round wall {got['wall_s']:6.2f} s, absorbed {got['absorbed']}, rejected "
              f"{got['rejected']}; aggregator RSS at round start {got['rss_start_mb']:6.0f} MB, peak during the "
              f"round {got['rss_peak_mb']:6.0f} MB (+{got['rss_peak_mb'] - got['rss_start_mb']:.0f} MB)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and N = 100, 300 (smoke run)")
    p.add_argument("--only", choices=("a", "b", "c"), action="append", help="run only these parts")
    args = p.parse_args()
    parts = set(args.only or "abc")
    broker = start_mosquitto()
    try:
        if "a" in parts:
            bench_overhead(broker.url, rounds=4 if args.quick else 10)
        if "b" in parts:
            bench_bytes(broker.url, rounds=2)
        if "c" in parts:
            bench_many(broker.url, (100, 300) if args.quick else (100, 1000), connections=50)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
