"""Benchmark of bounded rounds (issue 11 §2): a gateway client's round at growing store sizes, budget on and off.

One A+B FedMEKT-C client (acce 3 + gyro 3 channels, batch U[128,256) as HAPT) trains through the gateway
path — ``edge_client.training.LocalTrainer`` over a real SQLite ``SampleStore`` — at store sizes 1×, 10× and
100× of a HAPT-sized client partition (40 000 rows at 100 Hz, generated, no recorded data). Each measurement
runs in its own fresh process (so peak RSS is that size's alone): one warm-up round, then one timed round.
Printed per size and budget: the round's wall time split into the store read and the training, the local
optimizer steps it took, the numpy peak (tracemalloc) of the read and of the training, and the process's
peak RSS (torch included), with the goal beside them: with the budget (``hyper.local_step_budget``,
default 32) training time, steps and training memory stay flat as the store grows; without it (``0``, the
reference walk of the whole partition) they grow with it (run for 1× and 10× only). The store read and
what it holds still grow with the store: its retention (``max_samples``) bounds them.

``--hapt-rounds N`` also times N whole in-process FedMEKT-C rounds on recorded HAPT with both budgets at their
default and off (not part of the ~3 min default run; needs the data under ``FEDMEKT_DATA_DIR``).

Run: ``.venv/bin/python bench/bench_round_budget.py [--base-rows 40000] [--sizes 1,10,100] [--hapt-rounds N]``.
The machine is shared: the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

CHANNELS = {"acce": 3, "gyro": 3}
RATE_HZ = 100.0
CHUNK = 10_000  # rows per appended batch (a gateway appends small batches; the row count is what matters)


def _signal(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Smooth random-phase sines plus noise: sensor-like rows, cheap to generate at millions of rows."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)[:, None] / RATE_HZ
    out = {}
    for m, c in CHANNELS.items():
        freq, phase = rng.uniform(0.5, 3.0, c), rng.uniform(0, 2 * np.pi, c)
        out[m] = (np.sin(2 * np.pi * freq * t + phase) + 0.3 * rng.normal(size=(rows, c))).astype(np.float32)
    return out


def _partition(rows: int, seed: int):
    from sensors.partition import Partition

    return Partition(_signal(rows, seed), np.zeros(rows, np.int64), np.array([[0, rows]]), ("u0",))


def fill_store(path: Path, rows: int) -> None:
    from sensors.recording import SampleBatch
    from sensors.store import SampleStore

    with SampleStore(path, channels=CHANNELS) as store:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            data = _signal(n, start)
            store.append(SampleBatch(np.arange(start, start + n) / RATE_HZ, data, np.full(n, -1, np.int64), "dev"))


def _traced(fn):
    """(result, seconds, numpy peak MiB) of ``fn()``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def measure(store_path: Path, budget: int) -> dict:
    """A warm-up round through ``LocalTrainer.train``, then one round timed in its two parts (fresh process):
    the store read and the engine's local training, which is what ``LocalTrainer.train`` does between them."""
    from edge_client.training import LocalTrainer
    from fedmekt.config import FederationConfig, Hyper
    from fedmekt.engine import ServerEngine, client_view
    from sensors.store import SampleStore

    cfg = FederationConfig(federation="bench", dataset="bench", pair=("acce", "gyro"), algorithm="fedmekt-c",
                           device="cpu", threads=1, hyper=Hyper(local_step_budget=budget))
    proxy, labelled = _partition(20_000, 1), _partition(2_000, 2)
    server = ServerEngine(cfg, CHANNELS, ("x",), proxy, labelled)
    mods = ("acce", "gyro")
    with SampleStore(store_path) as store, tempfile.TemporaryDirectory() as state:
        trainer = LocalTrainer(cfg, "c0", mods, CHANNELS, proxy, store, Path(state))
        plan = server.plan_round(0, ["c0"])
        trainer.train(plan, client_view(server.downstream(plan), mods))
        steps = []
        step = trainer.engine.party.optim.step

        def counted(loss, names):
            steps.append(1)
            return step(loss, names)

        trainer.engine.party.optim.step = counted
        plan = server.plan_round(1, ["c0"])
        down = client_view(server.downstream(plan), mods)
        private, read_s, read_mb = _traced(lambda: store.read_partition(mods))
        _, train_s, train_mb = _traced(lambda: trainer.engine.train_round(plan, down, private))
    return dict(rows=len(private), read_s=read_s, train_s=train_s, round_s=read_s + train_s, steps=len(steps),
                read_mb=read_mb, train_mb=train_mb, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def hapt_rounds(rounds: int) -> None:
    """Mean wall time of a whole in-process FedMEKT-C round on recorded HAPT (9 clients + server), budgets on/off."""
    from fedmekt.config import FederationConfig, Hyper
    from fedmekt.federation import run_inprocess
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    split = make_split(load_dataset("hapt"), ("acce", "gyro"), seed=0)
    print(f"HAPT FedMEKT-C round, {rounds} rounds each (whole round: 9 clients, server update, classifier, probe)")
    for budget in (Hyper().local_step_budget, 0):
        cfg = FederationConfig(federation="bench", dataset="hapt", pair=("acce", "gyro"), rounds=rounds, device="cpu",
                               threads=1, hyper=Hyper(local_step_budget=budget, server_walk_step_budget=budget))
        rows = run_inprocess(cfg, split, progress=False).rows
        label = f"budgets {budget}" if budget else "budgets off"
        print(f"  {label:>12}: {np.mean([r['wall_s'] for r in rows]):6.2f} s per round", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-rows", type=int, default=40_000, help="rows of the 1× store (default 40 000)")
    ap.add_argument("--sizes", default="1,10,100", help="store sizes as multiples of --base-rows")
    ap.add_argument("--off-up-to", type=int, default=10, help="run the budget off up to this size (default 10)")
    ap.add_argument("--hapt-rounds", type=int, default=0,
                    help="also time N whole FedMEKT-C rounds on recorded HAPT, budgets on and off (default 0: skip)")
    ap.add_argument("--measure", nargs=2, metavar=("STORE", "BUDGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), int(args.measure[1]))))
        return
    from fedmekt.config import Hyper

    default = Hyper().local_step_budget
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the machine is shared)")
    print(f"goal: with the budget ({default} local steps per round) train time, steps and train MiB flat in the "
          "store size; off, they grow with it")
    print(f"{'store':>6} {'rows':>9} {'budget':>7} {'steps':>6} {'round s':>8} {'read s':>7} {'train s':>8} "
          f"{'read MiB':>9} {'train MiB':>10} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"store-{size}.sqlite"
            fill_store(path, size * args.base_rows)
            for budget in ([default, 0] if size <= args.off_up_to else [default]):
                res = subprocess.run([sys.executable, __file__, "--measure", str(path), str(budget)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                label = str(budget) if budget else "off"
                print(f"{size:>5}× {r['rows']:>9} {label:>7} {r['steps']:>6} {r['round_s']:>8.2f} {r['read_s']:>7.2f} "
                      f"{r['train_s']:>8.2f} {r['read_mb']:>9.1f} {r['train_mb']:>10.1f} {r['rss_mb']:>13.0f}",
                      flush=True)
            path.unlink()
    if args.hapt_rounds:
        hapt_rounds(args.hapt_rounds)


if __name__ == "__main__":
    main()
