"""F1 cost of the robust aggregation options against the plain mean, without an attacker.

Runs the same short in-process federation (bundled demo data) with ``robust_aggregation`` =
none, clip and trimmed for a few seeds and prints the final linear-probe F1 per test modality,
side by side, plus whether ``clip`` left every round bit-identical to ``none``. Usage::

    .venv/bin/python bench/bench_robust_aggregation.py [--rounds 10] [--seeds 0,1,2] [--algorithm fedmekt-c]
"""

from __future__ import annotations

import argparse
import time

MODES = ("none", "clip", "trimmed")


def main() -> int:
    from fedmekt.config import FederationConfig
    from fedmekt.federation import run_inprocess
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--algorithm", default="fedmekt-c")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    recordings = load_dataset("demo")
    results: dict[tuple[str, int], object] = {}
    for seed in seeds:
        for mode in MODES:
            cfg = FederationConfig(dataset="demo", algorithm=args.algorithm, rounds=args.rounds, seed=seed,
                                   device="cpu", robust_aggregation=mode)
            split = make_split(recordings, cfg.pair, scheme=cfg.partition, seed=seed, clients=cfg.clients)
            t0 = time.perf_counter()
            results[(mode, seed)] = run_inprocess(cfg, split, progress=False)
            print(f"{mode:<8} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    pair = results[(MODES[0], seeds[0])].config.pair
    print(f"\n{args.algorithm}, demo, {args.rounds} rounds, seeds {seeds}: final probe weighted F1 (mean over seeds)")
    print(f"{'mode':<8} " + " ".join(f"{m:>8}" for m in pair) + "   delta vs none")
    base = {m: sum(results[("none", s)].final[f"probe_f1_weighted_{m}"] for s in seeds) / len(seeds) for m in pair}
    for mode in MODES:
        f1 = {m: sum(results[(mode, s)].final[f"probe_f1_weighted_{m}"] for s in seeds) / len(seeds) for m in pair}
        delta = " ".join(f"{f1[m] - base[m]:+.4f}" for m in pair)
        print(f"{mode:<8} " + " ".join(f"{f1[m]:>8.4f}" for m in pair) + f"   {delta}")
    def learned(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    same = all(learned(results[("clip", s)].rows) == learned(results[("none", s)].rows) for s in seeds)
    print(f"clip rows identical to none (no honest upload clipped): {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
