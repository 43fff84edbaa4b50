"""What one device of four can do to the final F1 under each ``robust_aggregation``, beside the honest spread.

A small in-process federation (bundled demo data, four clients holding both modalities, all four selected
every round, so every upload key has four uploads) runs once honestly and once per attack strategy, for
each aggregation mode and each seed. The attacker is one client; each round it replaces its upload, per key,
with one of the strategies of the attack on small federations (issue 21, section 4), at the largest
magnitude the reject bound lets through (0.99 x ``REJECT_FACTOR`` x the round's reference scale):

* ``flipped``: its own honest upload, negated;
* ``peak``: a one-hot tensor (all of it on one value);
* ``negated global``: the round's global knowledge it was sent, negated.

Printed per mode and test modality: the honest final probe F1 (mean over seeds), the honest seed-to-seed
spread (sample standard deviation over seeds, and the range), and for each strategy the F1 change the one
device causes on the same seed (mean, and the largest in size over seeds), marked ``ok`` when that largest
change is within the honest standard deviation. Usage::

    .venv/bin/python bench/bench_robust_aggregation.py [--rounds 5] [--seeds 0,1,2] [--modes none,clip,trimmed]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

MODES = ("none", "clip", "trimmed")
STRATEGIES = ("flipped", "peak", "negated global")
ATTACKER = "c003"


def attack(strategy: str):
    """The tamper hook of ``run_inprocess``: ``ATTACKER``'s upload replaced by ``strategy``."""
    from fedmekt.learn import robust

    def tamper(cid: str, view: dict[str, np.ndarray], upload: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if cid != ATTACKER:
            return upload
        ref = robust.reference(view)
        out = {}
        for k, v in upload.items():
            if strategy == "flipped":
                direction = -v
            elif strategy == "peak":
                direction = np.zeros_like(v)
                direction.flat[0] = 1.0
            else:  # negated global: the knowledge it was sent for this key, or its own upload where none
                direction = -view[k] if k in view and view[k].shape == v.shape else -v
            size = robust.rms(direction)
            bound = 0.99 * robust.REJECT_FACTOR * ref.get(k, robust.REJECT_FLOOR)
            out[k] = (direction * (bound / size)).astype(np.float32) if size > 0 else v
        return out

    return tamper


def main() -> int:
    from fedmekt.config import FederationConfig
    from fedmekt.experiment.in_process import run_inprocess
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--algorithm", default="fedmekt-c")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    if len(seeds) < 3:
        parser.error("the honest spread needs --seeds with at least 3 seeds")
    recordings = load_dataset("demo")
    f1: dict[tuple[str, str, int], dict[str, float]] = {}  # (mode, strategy or "honest", seed) -> modality -> F1
    pair: tuple[str, ...] = ()
    started = time.perf_counter()
    for seed in seeds:
        for mode in modes:
            cfg = FederationConfig(dataset="demo", algorithm=args.algorithm, rounds=args.rounds, seed=seed,
                                   clients=(0, 0, 4), per_round=4, device="cpu", robust_aggregation=mode)
            split = make_split(recordings, cfg.pair, scheme=cfg.partition, seed=seed, clients=cfg.clients)
            pair = tuple(cfg.pair)
            for strategy in ("honest",) + STRATEGIES:
                t0 = time.perf_counter()
                result = run_inprocess(cfg, split, progress=False,
                                       tamper=None if strategy == "honest" else attack(strategy))
                f1[(mode, strategy, seed)] = {m: result.final[f"probe_f1_weighted_{m}"] for m in pair}
                print(f"{mode:<8} {strategy:<15} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n{args.algorithm}, demo, 4 clients (A+B), all 4 per round, {args.rounds} rounds, seeds {seeds}, "
          f"attacker {ATTACKER} (1 of 4); final probe weighted F1; {time.perf_counter() - started:.0f} s in all")
    print(f"{'mode':<8} {'modality':<8} {'honest':>7} {'sd':>6} {'range':>6} | "
          + " | ".join(f"{s + ' mean/max':>22}" for s in STRATEGIES))
    for mode in modes:
        for m in pair:
            honest = [f1[(mode, "honest", s)][m] for s in seeds]
            sd = statistics.stdev(honest)
            cells = []
            for strategy in STRATEGIES:
                delta = [f1[(mode, strategy, s)][m] - f1[(mode, "honest", s)][m] for s in seeds]
                worst = max(delta, key=abs)
                cells.append(f"{statistics.fmean(delta):+.3f} {worst:+.3f} {'ok' if abs(worst) <= sd else 'OUT':>3}")
            print(f"{mode:<8} {m:<8} {statistics.fmean(honest):7.3f} {sd:6.3f} {max(honest) - min(honest):6.3f} | "
                  + " | ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
