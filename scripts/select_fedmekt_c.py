"""Choose FedMEKT-C's options on VALIDATION data only (docs/fedmekt-c-selection.md).

For each selection seed the split (UR Fall acce-depth, or HAPT acce-gyro with ``--dataset hapt``) is
drawn as usual, then the server's labelled units are cut in two: two units (UR Fall: one fall and one
ADL recording; seeded) become the validation set, the rest stay the labelled set the
classifier and the final probe learn from. The run's test partition is replaced by the validation units,
so the split's real test units are never encoded or scored. Printed per candidate and seed: the paper
metric (median over the last 10 rounds of the moving probe's chunk-averaged weighted F1) and the final
probe's weighted F1, on validation acce and depth; and, because the encoders never see a label (only the
heads do), a leave-one-unit-out cross-validation of the final linear probe over ALL labelled units on the
final encoder (mean over folds of the held-out unit's weighted F1) — more validation rows, same rule.

    .venv/bin/python scripts/select_fedmekt_c.py [--dataset ur_fall] [--seeds 10,11,12] [--rounds 100] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

_NO_WALK = {"server_proxy_walk": False}   # the candidates measured before the walk became the default
CANDIDATES = {  # name -> config overrides ("hyper": Hyper fields; everything else at the defaults)
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


def units_subset(part, keep: list[int]):
    """Partition made of the segments (= units) at ``keep``."""
    from sensors.partition import Partition

    segs = part.segments[keep]
    rows = np.concatenate([np.arange(a, b) for a, b in segs])
    lengths = segs[:, 1] - segs[:, 0]
    stops = np.cumsum(lengths)
    return Partition({m: x[rows] for m, x in part.modalities.items()}, part.labels[rows],
                     np.stack([stops - lengths, stops], 1).astype(np.int64), tuple(part.units[i] for i in keep))


def louo_probe(res, labelled, channels, label_names) -> dict[str, float]:
    """Leave-one-labelled-unit-out weighted F1 of a converged linear probe on the frozen final encoder."""
    import torch

    from fedmekt.engine import build_model
    from fedmekt.evaluation import linear_probe

    model = build_model(res.config, channels)
    model.load_state_dict({k[len("autoencoder."):]: torch.from_numpy(v) for k, v in res.model_state.items()
                           if k.startswith("autoencoder.")})
    folds = {m: [] for m in res.config.pair}
    for i in range(len(labelled.units)):
        rest = [j for j in range(len(labelled.units)) if j != i]
        out = linear_probe(model, units_subset(labelled, rest), units_subset(labelled, [i]), res.config,
                           len(label_names), torch.device("cpu"), 0)
        for m in folds:
            folds[m].append(out[f"probe_f1_weighted_{m}"])
    return {f"cv_probe_{m}": float(np.mean(v)) for m, v in folds.items()}


def validation_split(split, seed: int):
    """The split with two labelled units moved to ``test`` (validation) and out of ``labelled``.

    UR Fall: one fall and one ADL recording (so both kinds are validated); other datasets: two subjects.
    """
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


def one(job: tuple[str, int, int]) -> dict:
    import torch

    from fedmekt.config import FederationConfig, Hyper
    from fedmekt.federation import run_inprocess
    from sensors.datasets import dataset_info, load_dataset
    from sensors.splits import make_split

    name, seed, rounds, dataset = job
    torch.set_num_threads(1)
    algorithm = "mmfedavg" if name == "mmfedavg" else "fedmekt-c"
    pair = dataset_info(dataset).default_pair
    split = make_split(load_dataset(dataset), pair, seed=seed)
    all_labelled = split.labelled
    split = validation_split(split, seed)
    overrides = dict(CANDIDATES.get(name, {}))
    hyper = Hyper(**overrides.pop("hyper", {}))
    cfg = FederationConfig(federation="select", dataset=dataset, pair=pair, algorithm=algorithm,
                           rounds=rounds, seed=seed, device="cpu", hyper=hyper, **overrides)
    res = run_inprocess(cfg, split, progress=False)
    out = {"candidate": name, "seed": seed, "val_units": list(split.test.units), "modalities": list(pair)}
    for m in cfg.pair:
        out[f"val_paper_{m}"] = float(np.median([r[f"f1_paper_{m}"] for r in res.rows[-10:]]))
        out[f"val_probe_{m}"] = res.final[f"probe_f1_weighted_{m}"]
    out["val_floor"] = res.final["majority_f1_weighted"]
    out.update(louo_probe(res, all_labelled, split.channels, split.label_names))
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ur_fall", help="ur_fall (acce-depth) or hapt (acce-gyro)")
    parser.add_argument("--seeds", default="10,11,12")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="names, or mmfedavg as a reference")
    args = parser.parse_args()
    jobs = [(c, int(s), args.rounds, args.dataset) for s in args.seeds.split(",") for c in args.candidates.split(",")]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, jobs))
    mods = results[0]["modalities"]
    keys = tuple(f"{kind}_{m}" for kind in ("val_paper", "val_probe", "cv_probe") for m in mods)
    print("\ncandidate | " + " | ".join(keys) + "  (mean ± std over seeds)")
    for c in args.candidates.split(","):
        rs = [r for r in results if r["candidate"] == c]
        cells = [f"{np.mean([r[k] for r in rs]):.3f} ± {np.std([r[k] for r in rs]):.3f}"
                 for k in keys]
        print(f"{c} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
