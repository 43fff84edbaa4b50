"""Benchmark of bounded rounds (issue 11 §2): a gateway client's round at growing store sizes, budget on and off.

One A+B FedMEKT-C client (acce 3 + gyro 3 channels, batch U[128,256) as HAPT) trains through the gateway
path — ``edge_client.training.LocalTrainer`` over a real SQLite ``SampleStore`` — at store sizes 1×, 10× and
100× of a HAPT-sized client partition (40 000 rows at 100 Hz, generated, no recorded data). Each measurement
runs in its own fresh process (so peak RSS is that size's alone), set up as ``fedmekt client`` runs (oneDNN's
kernel cache bounded, ``edge_client.lean``): one warm-up round, then one timed round.
Printed per size, budget and read: the round's wall time, the local optimizer steps it took, the numpy peak
(tracemalloc) of the round and the process's peak RSS (torch included) with its ratio to the 1× figure, the
goal beside them: with the budget (``hyper.local_step_budget``, default 32) and the store read of the
gateway (``crops``: ``SampleStore.open_partition``, only the rows the round's crops take) time, steps and
memory stay flat as the store grows. ``whole`` is the former read of the whole store into memory
(``read_partition``) with the same budget, for comparison; budget ``off`` (``0``, the reference walk of the
whole partition) grows with the store by design (run for 1× and 10× only).

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


def measure(store_path: Path, budget: int, read: str) -> dict:
    """A warm-up round, then one timed round (fresh process) through the gateway's ``LocalTrainer.train``
    (``read="crops"``) or the engine on the whole store read into memory (``read="whole"``)."""
    from edge_client.lean import lean_process

    lean_process()  # as `fedmekt client` runs
    from edge_client.training import LocalTrainer
    from fedmekt.config import FederationConfig, Hyper
    from fedmekt.learn.engine import ServerEngine, client_view
    from sensors.store import SampleStore

    cfg = FederationConfig(federation="bench", dataset="bench", pair=("acce", "gyro"), algorithm="fedmekt-c",
                           device="cpu", threads=1, hyper=Hyper(local_step_budget=budget))
    proxy, labelled = _partition(20_000, 1), _partition(2_000, 2)
    server = ServerEngine(cfg, CHANNELS, ("x",), proxy, labelled)
    mods = ("acce", "gyro")
    with SampleStore(store_path) as store, tempfile.TemporaryDirectory() as state:
        trainer = LocalTrainer(cfg, "c0", mods, CHANNELS, proxy, store, Path(state))

        def round_(r: int):
            plan = server.plan_round(r, ["c0"])
            down = client_view(server.downstream(plan), mods)
            if read == "crops":
                return trainer.train(plan, down)
            return trainer.engine.train_round(plan, down, store.read_partition(mods))

        round_(0)
        steps = []
        step = trainer.engine.party.optim.step

        def counted(loss, names):
            steps.append(1)
            return step(loss, names)

        trainer.engine.party.optim.step = counted
        _, round_s, round_mb = _traced(lambda: round_(1))
    return dict(rows=store_rows(store_path), round_s=round_s, steps=len(steps), round_mb=round_mb,
                rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def store_rows(path: Path) -> int:
    from sensors.store import SampleStore

    with SampleStore(path) as store:
        return store.count()


def hapt_rounds(rounds: int) -> None:
    """Mean wall time of a whole in-process FedMEKT-C round on recorded HAPT (9 clients + server), budgets on/off."""
    from fedmekt.config import FederationConfig, Hyper
    from fedmekt.experiment.in_process import run_inprocess
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
    ap.add_argument("--measure", nargs=3, metavar=("STORE", "BUDGET", "READ"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), int(args.measure[1]), args.measure[2])))
        return
    from fedmekt.config import Hyper
    from fedmekt_cli.client import ONEDNN_CACHE_CAPACITY

    default = Hyper().local_step_budget
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the machine is shared)")
    print(f"goal: with the budget ({default} local steps per round) and the gateway's read (crops), round time, "
          "steps, numpy MiB and peak RSS flat in the store size (RSS ratio to 1× about 1.0)")
    print(f"{'store':>6} {'rows':>9} {'budget':>7} {'read':>6} {'steps':>6} {'round s':>8} {'numpy MiB':>10} "
          f"{'peak RSS MiB':>13} {'RSS vs 1x':>10}")
    base_rss: dict[tuple[str, str], float] = {}
    env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": ONEDNN_CACHE_CAPACITY, **os.environ}  # as `fedmekt client` runs
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"store-{size}.sqlite"
            fill_store(path, size * args.base_rows)
            runs = [(default, "crops"), (default, "whole")] + ([(0, "crops")] if size <= args.off_up_to else [])
            for budget, read in runs:
                res = subprocess.run([sys.executable, __file__, "--measure", str(path), str(budget), read],
                                     capture_output=True, text=True, check=True, env=env)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                label = str(budget) if budget else "off"
                base = base_rss.setdefault((label, read), r["rss_mb"])
                print(f"{size:>5}× {r['rows']:>9} {label:>7} {read:>6} {r['steps']:>6} {r['round_s']:>8.2f} "
                      f"{r['round_mb']:>10.1f} {r['rss_mb']:>13.0f} {r['rss_mb'] / base:>10.2f}", flush=True)
            path.unlink()
    if args.hapt_rounds:
        hapt_rounds(args.hapt_rounds)


if __name__ == "__main__":
    main()
