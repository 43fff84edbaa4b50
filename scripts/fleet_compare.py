"""Mixed fleet against its baselines, paired by seed, from three ``fedmekt reproduce`` run folders.

    .venv/bin/python scripts/fleet_compare.py runs/fleet-standard runs/fleet-mixed runs/fleet-small \
        [--heterofl runs/fleet-heterofl] [--versus runs/other-mixed] [--mixed-classes redistilled.jsonl]

The folders: FedMEKT-C with every client at the standard class (``--fleet standard``), FedMEKT-C with a mixed
fleet (``--fleet mixed``), and baseline (a), mmFedAvg with every client at the smallest class
(``--algorithms mmfedavg --fleet small``); the same seeds in each (one split per seed, shared). Optionally
baseline (b), HeteroFL on the mixed fleet (``--algorithms heterofl --fleet mixed``), and ``--versus`` another
mixed fleet of FedMEKT-C (another KD, say), each class paired with its own. Prints, per test modality,
the deployed model's weighted F1 of each class (mean ± std over seeds) and the paired differences (95 %
t-interval, ``fedmekt.experiment.statistics``) of each mixed-fleet class against (a), (b) and the homogeneous
standard fleet, the global model's converged probe, and the bytes of each run. Where (a)'s folder holds the
``local-only`` reference row (``--references local-only``: every client alone at the small class), the small
class is also paired with it (its probe: local-only ships no head).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmekt.device_classes import CLASSES  # noqa: E402
from fedmekt.experiment.statistics import paired_difference  # noqa: E402


def finals(folder: Path, variant: str | None = None) -> dict[int, dict]:
    """Seed -> final record of the folder's run (or of its reference row ``variant``)."""
    out = {}
    for line in (folder / "final.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if (rec.get("variant") == variant) if variant else not rec.get("reference"):
                out[rec["seed"]] = rec
    return out


def run_bytes(folder: Path) -> dict[int, float]:
    """Seed -> bytes over the run (uploads + downloads of every round, plus the one-off proxy set), MiB."""
    per_seed: dict[int, float] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            per_seed[row["seed"]] = per_seed.get(row["seed"], 0.0) + row["bytes_up"] + row["bytes_down"]
    return {s: (b + finals(folder)[s]["bytes_proxy_once"]) / 2**20 for s, b in per_seed.items()}


def of_class(runs: dict[int, dict], device_class: str, figure: str) -> dict[int, float]:
    """Seed -> ``figure`` of ``device_class``'s package (``class_<c>_<figure>``) in a mixed fleet's records."""
    return {s: r[f"class_{device_class}_{figure}"] for s, r in runs.items()}


def stat(values: dict[int, float]) -> str:
    v = np.array(list(values.values()), dtype=np.float64)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("standard", type=Path)
    ap.add_argument("mixed", type=Path)
    ap.add_argument("smallest", type=Path, help="baseline (a): mmFedAvg, every client at the smallest class")
    ap.add_argument("--heterofl", type=Path, default=None, help="baseline (b): HeteroFL on the mixed fleet")
    ap.add_argument("--versus", type=Path, default=None,
                    help="another mixed fleet (e.g. the default KD beside --kd relational): each class paired with its own")
    ap.add_argument("--mixed-classes", type=Path, default=None,
                    help="per-class figures to use instead of the mixed folder's (scripts/fleet_redistil.py output)")
    args = ap.parse_args()
    std, mixed, base = finals(args.standard), finals(args.mixed), finals(args.smallest)
    hetero = finals(args.heterofl) if args.heterofl else {}
    versus = finals(args.versus) if args.versus else {}
    alone = finals(args.smallest, "local-only")
    if args.mixed_classes is not None:
        for line in args.mixed_classes.read_text().splitlines():
            rec = json.loads(line)
            mixed[rec["seed"]] = {**mixed[rec["seed"]], **rec}
    pair = next(iter(mixed.values()))["pair"].split("-")
    print(f"seeds: standard {sorted(std)}, mixed {sorted(mixed)}, (a) {sorted(base)}\n")
    for m in pair:
        deployed = f"deployed_f1_weighted_{m}"
        print(f"## test {m}: deployed model, weighted F1 (mean ± std over seeds)")
        print(f"(a) mmFedAvg, all small              {stat({s: r[deployed] for s, r in base.items()})}")
        print(f"FedMEKT-C, all standard              {stat({s: r[deployed] for s, r in std.items()})}")
        for name, runs in (("FedMEKT-C mixed", mixed), ("(b) HeteroFL mixed", hetero)):
            for c in CLASSES if runs else ():
                print(f"{f'{name}, {c} class':<37}{stat(of_class(runs, c, deployed))}")
        if alone:
            alone_probe = {s: r[f"probe_f1_weighted_{m}"] for s, r in alone.items()}
            print(f"local-only, small (probe)            {stat(alone_probe)}")
        print(f"\npaired differences (95 % t-interval)")
        of_a, of_std = ({s: r[deployed] for s, r in runs.items()} for runs in (base, std))
        for c in CLASSES:
            mine = of_class(mixed, c, deployed)
            print(f"{f'mixed {c} − (a)':<37}{paired_difference(mine, of_a).text()}")
            print(f"{f'mixed {c} − all standard':<37}{paired_difference(mine, of_std).text()}")
            if versus:
                theirs = of_class(versus, c, deployed)
                print(f"{f'mixed {c} − versus {c}':<37}{paired_difference(mine, theirs).text()}")
            if hetero:
                theirs = of_class(hetero, c, deployed)
                print(f"{f'mixed {c} − (b) {c}':<37}{paired_difference(mine, theirs).text()}")
                print(f"{f'(b) {c} − (a)':<37}{paired_difference(theirs, of_a).text()}")
        if alone:
            mine = of_class(mixed, "small", deployed)
            print(f"{'mixed small − local-only small':<37}{paired_difference(mine, alone_probe).text()}")
        probe = {name: {s: r[f"probe_f1_weighted_{m}"] for s, r in runs.items()}
                 for name, runs in (("mixed", mixed), ("std", std), ("a", base))}
        print(f"global model's probe: mixed (large) {stat(probe['mixed'])}, all standard {stat(probe['std'])}, "
              f"(a) {stat(probe['a'])}; mixed − (a) {paired_difference(probe['mixed'], probe['a']).text()}\n")
    print("## bytes over the run (MiB, mean ± std over seeds)")
    for name, folder in (("(a) mmFedAvg, all small", args.smallest), ("FedMEKT-C, all standard", args.standard),
                         ("FedMEKT-C mixed", args.mixed), ("(b) HeteroFL mixed", args.heterofl)):
        if folder is not None:
            print(f"{name:<37}{stat(run_bytes(folder))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
