"""Choose ``fedmekt simulate``'s demo settings (what ``make demo`` runs) on VALIDATION data only.

The demo must show learning within about a minute on 2 cores. Each candidate runs in-process (the same
metrics as ``simulate``, which goes through the broker) on the demo's own split (seed 0: 8 subjects, one of
them labelled) with its test subject replaced by a validation set cut from the labelled subject: its
recording in blocks of 500 rows (10 s), odd blocks scored, even blocks kept as the labelled set (HAPT's
protocol runs the activities in a fixed order, so a cut in time would leave different classes on each
side; neighbouring blocks are alike, which flatters every candidate alike). The demo's test subject is
never scored. Run seeds (client sampling, initialisation) are selection seeds, 100 and up. Printed per
candidate, mean over seeds: the final probe's weighted F1 on the validation rows, the per-round paper F1 of
round 1, its peak, the median of the last 4 rounds (a curve that peaks and falls back does not convince),
the majority floor, the raw-feature probe and the CPU seconds of the run.

    .venv/bin/python scripts/select_demo.py [--seeds 100,101] [--jobs 2] [--candidates current,mmfedavg]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

DEMO_SEED = 0       # the split simulate draws for the demo
BLOCK = 500         # rows; odd blocks of the labelled recordings are the validation set
BASE = dict(dataset="demo", clients=(3, 3, 3), per_round=6, rounds=20, proxy_windows=32)  # the demo until now
CANDIDATES = {  # name -> overrides of BASE ("hyper": Hyper fields)
    "current": {},
    "mmfedavg": {"algorithm": "mmfedavg"},
    "all9": {"per_round": 9},
    "le4": {"hyper": {"local_epochs": 4}},
}


def config(name: str, seed: int):
    from fedmekt.config import FederationConfig, Hyper
    from sensors.datasets import dataset_info

    over = {"algorithm": "fedmekt-c", **BASE, **CANDIDATES[name]}
    hyper = Hyper(**over.pop("hyper", {}))
    return FederationConfig(federation="select-demo", pair=dataset_info("demo").default_pair, seed=seed,
                            device="cpu", hyper=hyper, **over)


def validation_split(split):
    """The split with ``test`` replaced by the odd 500-row blocks of the labelled recordings (cut out of
    ``labelled``, which keeps the even ones)."""
    from sensors.partition import Partition

    lab = split.labelled
    blocks = [(a, min(a + BLOCK, b)) for s, b in lab.segments for a in range(int(s), int(b), BLOCK)]

    def part(bounds) -> Partition:
        rows = np.concatenate([np.arange(a, b) for a, b in bounds])
        stops = np.cumsum([b - a for a, b in bounds])
        return Partition({m: x[rows] for m, x in lab.modalities.items()}, lab.labels[rows],
                         np.stack([stops - [b - a for a, b in bounds], stops], 1).astype(np.int64),
                         tuple(f"block{i}" for i in range(len(bounds))))

    split.labelled, split.test = part(blocks[0::2]), part(blocks[1::2])
    return split


def one(job: tuple[str, int]) -> dict:
    import torch

    from fedmekt.experiment.in_process import run_inprocess
    from fedmekt.experiment.reference_rows import raw_features_final
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    name, seed = job
    torch.set_num_threads(1)
    cfg = config(name, seed)
    split = validation_split(make_split(load_dataset("demo"), cfg.pair, seed=DEMO_SEED, clients=cfg.clients))
    start = time.process_time()   # CPU seconds of this one-thread process: wall time depends on the neighbours
    res = run_inprocess(cfg, split, progress=False)
    cpu = time.process_time() - start
    raw = raw_features_final(cfg, split)
    curve = np.mean([[r[f"f1_paper_{m}"] for m in cfg.pair] for r in res.rows], axis=1)
    out = {"candidate": name, "seed": seed, "cpu_s": cpu,
           "probe": float(np.mean([res.final[f"probe_f1_weighted_{m}"] for m in cfg.pair])),
           "first": float(curve[0]), "peak": float(curve.max()), "last4": float(np.median(curve[-4:])),
           "floor": res.final["majority_f1_weighted"],
           "raw": float(np.mean([raw[f"probe_f1_weighted_{m}"] for m in cfg.pair]))}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="100,101")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    args = parser.parse_args()
    from fedmekt.experiment.validation import check_selection_seeds

    seeds = check_selection_seeds(int(s) for s in args.seeds.split(","))
    names = args.candidates.split(",")
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, [(c, s) for c in names for s in seeds]))
    keys = ("probe", "first", "peak", "last4", "floor", "raw", "cpu_s")
    print("\ncandidate | " + " | ".join(keys) + "   (validation subjects, mean of modalities and seeds)")
    for c in names:
        rows = [r for r in results if r["candidate"] == c]
        print(f"{c} | " + " | ".join(f"{np.mean([r[k] for r in rows]):.3f}" for k in keys))


if __name__ == "__main__":
    main()
