"""A mixed fleet's per-package cost on the server: distilling each narrower device class's model (issue 22).

A ``fleet = "mixed"`` FedMEKT-C server on the bundled demo data (the default config otherwise) runs ``--rounds``
rounds that absorb no uploads (the server's own steps and classifier round: the global model moves as in a run)
and, as ``fedmekt aggregator --package-every 1`` does, builds every class's model after each round. Printed per
round: the wall and CPU seconds (one torch thread: CPU seconds are the work, whatever the machine's load) of
the deployed model (what the widest class ships, fine-tuned every package) and of the narrower classes'
distillation (``ServerEngine.class_models``), and whether that round's students
were warm-started from the previous package (``hyper.class_distil_warm_steps``) or distilled afresh
(``hyper.class_distil_steps``: the first package and the last round's). ``--warm-steps`` overrides the warm
budget; ``--warm-steps`` equal to the default ``class_distil_steps`` is the cost of distilling at full budget
every round.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_class_models.py [--rounds 5] [--warm-steps N]``.
The machine may be shared: the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmekt.config import FederationConfig  # noqa: E402
from fedmekt.learn.engine import ServerEngine  # noqa: E402
from sensors.datasets import load_dataset  # noqa: E402
from sensors.splits import make_split  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-steps", type=int, default=None, help="hyper.class_distil_warm_steps (default: its default)")
    args = ap.parse_args()
    cfg = FederationConfig(dataset="demo", fleet="mixed", rounds=args.rounds, device="cpu")
    if args.warm_steps is not None:
        cfg = dataclasses.replace(cfg, hyper=dataclasses.replace(cfg.hyper, class_distil_warm_steps=args.warm_steps))
    split = make_split(load_dataset(cfg.dataset), cfg.pair, scheme=cfg.partition, seed=cfg.seed, clients=cfg.clients)
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    ids = [c.client_id for c in split.clients]
    h = cfg.hyper
    print(json.dumps({"class_distil_steps": h.class_distil_steps, "class_distil_warm_steps": h.class_distil_warm_steps,
                      "threads": cfg.threads, "load_average": os.getloadavg()[0]}))
    for rnd in range(cfg.rounds):
        plan = server.plan_round(rnd, ids)
        server.begin_round(plan)
        server.update_without_uploads(plan)
        server.finish_round(plan)
        warm = 0 < rnd and server.rounds_completed < cfg.rounds   # a package before this one, not the last
        t0, c0 = time.perf_counter(), time.process_time()
        server.deployed()
        t1, c1 = time.perf_counter(), time.process_time()
        server.class_models()
        t2, c2 = time.perf_counter(), time.process_time()
        print(json.dumps({"package_after_round": server.rounds_completed, "deployed_s": round(t1 - t0, 2),
                          "deployed_cpu_s": round(c1 - c0, 2), "class_distil_s": round(t2 - t1, 2),
                          "class_distil_cpu_s": round(c2 - c1, 2), "students": "warm" if warm else "fresh",
                          "load_average": os.getloadavg()[0]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
