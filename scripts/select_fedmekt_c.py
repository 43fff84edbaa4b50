"""Choose options on VALIDATION data only, by the protocol of ``fedmekt.validation`` (docs/fedmekt-c-selection.md).

For each selection seed (100 and up, disjoint from the reported seeds 0..4) the split (UR Fall acce-depth,
or HAPT acce-gyro with ``--dataset hapt``) is drawn as usual and two labelled units (UR Fall: one fall, one
ADL; seeded) replace the test partition for the per-round metric, so the split's real test units are never
encoded or scored. The score of a run is the cross-validated linear probe by unit over ALL the labelled
units on the frozen final encoder (leave-one-unit-out, or ``--folds K``; the encoders never see a label),
averaged over the pair's modalities. Every candidate is compared with ``--against`` (default: the current
defaults) as paired per-seed differences with a 95 % t-interval, and marked ADOPT only when the interval
lies wholly above zero. The table also prints the protocol's resolution: the smallest gain these seeds
could confirm at the observed spread.

    .venv/bin/python scripts/select_fedmekt_c.py [--dataset ur_fall] [--seeds 100,101,102,103,104] \
        [--rounds 100] [--jobs 2] [--folds 0] [--candidates default,walk-rep-fp16] [--against default]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

_NO_WALK = {"server_proxy_walk": False}   # the candidates measured before the walk became the default
CANDIDATES = {  # name -> config overrides ("hyper": Hyper fields; everything else at the defaults)
    "default": {},                          # the current defaults: what every candidate is compared with
    "mmfedavg": {"algorithm": "mmfedavg"},  # the baseline, under the same protocol
    "kl-T3": {"hyper": {"kd": "kl", "temperature": 3.0}, **_NO_WALK},
    "kl-T0.5": {"hyper": {"kd": "kl", "temperature": 0.5}, **_NO_WALK},
    "mse": {"hyper": {"kd": "mse"}, **_NO_WALK},
    "mse-w0.1": {"hyper": {"kd": "mse", "alpha": 0.01, "beta": 0.004, "eta": 0.01, "gamma": 0.004}, **_NO_WALK},
    "mse-rep-fp16": {"hyper": {"kd": "mse"}, "layers": "rep", "wire_dtype": "float16", **_NO_WALK},
    "kl-T3-rep-fp16": {"hyper": {"kd": "kl", "temperature": 3.0}, "layers": "rep", "wire_dtype": "float16",
                       **_NO_WALK},
    "faithful": {"faithful": True, **_NO_WALK},
    "kl-R4": {"hyper": {"global_epochs": 4}, **_NO_WALK},
    "kl-pb8": {"proxy_batch": 8, **_NO_WALK},
    "kl-w10": {"hyper": {"alpha": 1.0, "beta": 0.4, "eta": 1.0, "gamma": 0.4}, **_NO_WALK},
    "mse-w10": {"hyper": {"kd": "mse", "alpha": 1.0, "beta": 0.4, "eta": 1.0, "gamma": 0.4}, **_NO_WALK},
    "walk": {"server_proxy_walk": True},   # the default since the second round
    "walk-rep-fp16": {"server_proxy_walk": True, "layers": "rep", "wire_dtype": "float16"},
}


def cv_score(res, labelled, label_names, folds: int) -> dict[str, float]:
    """Cross-validated probe by unit over ALL labelled units on the run's frozen final encoder."""
    import torch

    from fedmekt.engine import build_model
    from fedmekt.validation import cv_probe, unit_folds

    model = build_model(res.config, {m: labelled.modalities[m].shape[1] for m in res.config.pair})
    model.load_state_dict({k[len("autoencoder."):]: torch.from_numpy(v) for k, v in res.model_state.items()
                           if k.startswith("autoencoder.")})
    cv = cv_probe(model, labelled, res.config, len(label_names), unit_folds(len(labelled.units), folds,
                                                                                res.config.seed), torch.device("cpu"))
    return {f"cv_probe_{m}": v for m, v in cv.items()}


def validation_split(split, seed: int):
    """The split with two labelled units moved to ``test`` (validation) and out of ``labelled``.

    UR Fall: one fall and one ADL recording (so both kinds are validated); other datasets: two subjects.
    """
    from fedmekt.validation import units_subset

    lab = split.labelled
    rng = np.random.default_rng([seed, 77])
    if all(u.startswith(("fall", "adl")) for u in lab.units):
        val = sorted(int(rng.choice([i for i, u in enumerate(lab.units) if u.startswith(kind)]))
                     for kind in ("fall", "adl"))
    else:
        val = sorted(int(i) for i in rng.choice(len(lab.units), 2, replace=False))
    train = [i for i in range(len(lab.units)) if i not in val]
    split.labelled, split.test = units_subset(lab, train), units_subset(lab, val)
    return split


def one(job: tuple[str, int, int, str, int]) -> dict:
    import torch

    from fedmekt.config import FederationConfig, Hyper
    from fedmekt.federation import run_inprocess
    from sensors.datasets import dataset_info, load_dataset
    from sensors.splits import make_split

    name, seed, rounds, dataset, folds = job
    torch.set_num_threads(1)
    pair = dataset_info(dataset).default_pair
    split = make_split(load_dataset(dataset), pair, seed=seed)
    all_labelled = split.labelled
    split = validation_split(split, seed)
    overrides = {"algorithm": "fedmekt-c", **CANDIDATES[name]}
    hyper = Hyper(**overrides.pop("hyper", {}))
    cfg = FederationConfig(federation="select", dataset=dataset, pair=pair, rounds=rounds, seed=seed, device="cpu",
                           hyper=hyper, **overrides)
    res = run_inprocess(cfg, split, progress=False)
    out = {"candidate": name, "seed": seed, "val_units": list(split.test.units), "modalities": list(pair)}
    for m in cfg.pair:
        out[f"val_paper_{m}"] = float(np.median([r[f"f1_paper_{m}"] for r in res.rows[-10:]]))
        out[f"val_probe_{m}"] = res.final[f"probe_f1_weighted_{m}"]
    out["val_floor"] = res.final["majority_f1_weighted"]
    out.update(cv_score(res, all_labelled, split.label_names, folds))
    out["score"] = float(np.mean([out[f"cv_probe_{m}"] for m in cfg.pair]))
    print(json.dumps(out), flush=True)
    return out


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def summary(results: list[dict], candidates: list[str], against: str) -> list[str]:
    """The table: CV probe per modality (mean ± std over seeds), paired difference against ``against``, decision."""
    from fedmekt.validation import decide, smallest_detectable

    mods = results[0]["modalities"]
    score = {c: {r["seed"]: r["score"] for r in results if r["candidate"] == c} for c in candidates}
    per_mod = {(c, m): {r["seed"]: r[f"cv_probe_{m}"] for r in results if r["candidate"] == c}
               for c in candidates for m in mods}
    lines = ["candidate | " + " | ".join(f"CV probe {m}" for m in mods) + f" | score − {against} [95 % CI] "
             "(mean of modalities) | " + " | ".join(f"{m} − {against}" for m in mods) + " | resolution | decision"]
    for c in candidates:
        cells = [_mean_std(list(per_mod[(c, m)].values())) for m in mods]
        if c == against:
            lines.append(f"{c} | " + " | ".join(cells) + " | (reference) |" + " |" * len(mods) + " | –")
            continue
        d = decide(score[c], score[against])
        diffs = [score[c][s] - score[against][s] for s in score[c] if s in score[against]]
        per = [decide(per_mod[(c, m)], per_mod[(against, m)]).difference.text() for m in mods]
        lines.append(f"{c} | " + " | ".join(cells) + f" | {d.difference.text()} | " + " | ".join(per)
                     + f" | ±{smallest_detectable(diffs, len(diffs)):.3f} | {'ADOPT' if d.adopt else 'keep'}")
    return lines


def main() -> None:
    from fedmekt.errors import UserError
    from fedmekt.validation import check_selection_seeds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ur_fall", help="ur_fall (acce-depth) or hapt (acce-gyro)")
    parser.add_argument("--seeds", default="100,101,102,103,104", help="selection seeds, all >= 100")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--folds", type=int, default=0, help="0 = leave one labelled unit out, else K folds of units")
    parser.add_argument("--candidates", default="default,walk-rep-fp16", help=f"names from: {', '.join(CANDIDATES)}")
    parser.add_argument("--against", default="default", help="the candidate every other is paired with")
    args = parser.parse_args()
    try:
        seeds = check_selection_seeds(int(s) for s in args.seeds.split(","))
        candidates = list(dict.fromkeys([args.against, *args.candidates.split(",")]))
        unknown = [c for c in candidates if c not in CANDIDATES]
        if unknown:
            raise UserError(f"unknown candidate(s) {unknown}; choose from {', '.join(CANDIDATES)}")
    except (UserError, ValueError) as exc:
        sys.exit(f"select_fedmekt_c: error: {exc}")
    jobs = [(c, s, args.rounds, args.dataset, args.folds) for s in seeds for c in candidates]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, jobs))
    print("\n" + "\n".join(summary(results, candidates, args.against)))


if __name__ == "__main__":
    main()
