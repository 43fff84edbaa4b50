"""Choose options on VALIDATION data only, by the protocol of ``fedmekt.experiment.validation`` (docs/fedmekt-c-selection.md).

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
import itertools
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

_NO_WALK = {"server_proxy_walk": False}   # the candidates measured before the walk became the default


def _before_heads(overrides: dict) -> dict:
    """A candidate measured before per-client teacher heads became the default, on the paper's mean teacher."""
    return {**overrides, "hyper": {"server_teacher": "mean", **overrides.get("hyper", {})}}


def _before_int8(overrides: dict) -> dict:
    """A candidate measured before FedMEKT's wire dtype became int8 ("auto"), on the float32 wire of then."""
    return {"wire_dtype": "float32", **overrides}


# diagnoses of the channel: encoders trained outside a federation, at the defaults (``diagnosis_model``): proxy-only
# and pooled as the reference rows train them, and a FedMEKT-C server taught by ONE ideal client, the pooled
# autoencoder itself, through the default channel (its embeddings of Π_t on the int8 wire, the server's heads)
DIAGNOSES = {
    "proxy-only": {}, "pooled": {}, "pooled-teacher": {},
    "pooled-teacher-w10": {"hyper": {"heads_weight": 10.0}},   # the same teacher, pulled ten times as hard
}

CANDIDATES = {  # name -> config overrides ("hyper": Hyper fields; everything else at the defaults)
    "default": {},                          # the current defaults: what every candidate is compared with
    "mmfedavg": {"algorithm": "mmfedavg"},  # the baseline, under the same protocol
    "int8": {"wire_dtype": "int8"},   # issue 19 bytes: embeddings and Π_t's windows as int8 codes (the default since)
    "float32": {"wire_dtype": "float32"},   # the wire of every candidate below (the default before int8)
    # issue 19 §2a again, on today's defaults (heads, int8). Below, "mmfedavg-r8" is mmFedAvg at r = 8 as today (its
    # teacher and wire pins do not apply to it) and "no-kd-server-r8" proxy-only at r = 8 whatever the teacher and
    # wire (with eta = gamma = 0 the server's update ignores the uploads)
    "heads-r8": {"rep_size": 8},
    # issue 19 §2: the heads read the server's hidden layer h (a projection of their own) and leave z to the
    # reconstruction; at r = 8 beside "heads-r8" and "no-kd-server-r8"
    "heads-hidden": {"hyper": {"heads_from": "hidden"}},
    "heads-hidden-r8": {"rep_size": 8, "hyper": {"heads_from": "hidden"}},
    # issue 19 §2d: clients that train as long as the server. A HAPT client takes about 20 private steps an epoch and
    # is picked in 9 of 30 rounds, so it trains far less than the server it teaches; 8 local epochs (at most 160
    # steps a round) for both algorithms
    **{f"{prefix}client-steps-160": {**algo, "hyper": {"local_epochs": 8, "local_step_budget": 160}}
       for prefix, algo in (("", {}), ("mmfedavg-", {"algorithm": "mmfedavg"}))},
    # §2d on today's defaults: cross-modal InfoNCE between z_A(t) and z_B(t) on the A+B clients' windows and the
    # server's proxy windows (issue 10's "align-nce" was measured on UR Fall before the heads); the server aligns its
    # own modalities too, so its proxy-only counterpart aligns as well
    "align-nce-today": {"hyper": {"align": "infonce"}},
    "no-kd-server-align-nce": {"hyper": {"server_teacher": "mean", "eta": 0.0, "gamma": 0.0, "align": "infonce"}},
    "mmfedavg-align-nce": {"algorithm": "mmfedavg", "hyper": {"align": "infonce"}},   # its A+B clients align
    # aligned, with a wider knowledge channel: r = 8 for FedMEKT-C, its aligned proxy-only twin and mmFedAvg
    "align-nce-r8": {"rep_size": 8, "hyper": {"align": "infonce"}},
    "no-kd-server-align-nce-r8": {"rep_size": 8,
                                  "hyper": {"server_teacher": "mean", "eta": 0.0, "gamma": 0.0, "align": "infonce"}},
    "mmfedavg-align-nce-r8": {"algorithm": "mmfedavg", "rep_size": 8, "hyper": {"align": "infonce"}},
    # aligned, distilled over four times as many proxy windows a round (a diagnosis of the channel's volume: it costs
    # four times the bytes), and its aligned proxy-only twin, which takes the same server steps on Π_t
    "align-nce-W192": {"proxy_windows": 192, "hyper": {"align": "infonce"}},
    "no-kd-server-align-nce-W192": {"proxy_windows": 192, "hyper": {"server_teacher": "mean", "eta": 0.0,
                                                                    "gamma": 0.0, "align": "infonce"}},
    # a diagnosis of the headroom: the server keeps 2 of its proxy units (UR Fall: a fall and an ADL run of 7;
    # HAPT: 2 recordings of 6), the clients unchanged; "no-kd-server-P2" is proxy-only on that smaller set
    "P2": {"proxy_units": 2},
    "no-kd-server-P2": {"proxy_units": 2, "hyper": {"server_teacher": "mean", "eta": 0.0, "gamma": 0.0}},
    **DIAGNOSES,
    # measured before int8 became the default: pinned to float32
    **{name: _before_int8(overrides) for name, overrides in {
        # §2c: a linear head per client on the server ("-trust": each client weighted by its head's fit), at weight w;
        # heads-trust-w1 is the default's teacher, "mean" the paper's (the default before)
        **{f"heads-w{w:g}": {"hyper": {"server_teacher": "heads", "heads_weight": w}} for w in (0.1, 1.0)},
        **{f"heads-trust-w{w:g}": {"hyper": {"server_teacher": "heads-trust", "heads_weight": w}}
           for w in (0.1, 1.0, 10.0)},
        "mean": {"hyper": {"server_teacher": "mean"}},
        # §2d, second half: the server's proxy reconstruction (and walk) cut after a warm-up of N rounds
        **{f"rec-warmup{n}": {"hyper": {"server_rec_rounds": n}} for n in (20, 50)},
        "W12": {"proxy_windows": 12},   # issue 19 bytes: a quarter of Π_t's windows (HAPT's "round" delivery)
        # measured before issue 19 §2c, with the paper's mean teacher (the default then): pinned to it
        **{name: _before_heads(overrides) for name, overrides in {
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
            "walk": {"server_proxy_walk": True, "layers": "rep+hidden"},   # the default of the second round
            "walk-rep-fp16": {"server_proxy_walk": True, "layers": "rep", "wire_dtype": "float16"},
            # issue 10 §2, measured under the protocol (seeds >= 100, paired); docs/fedmekt-c-selection.md
            "no-kd-server": {"hyper": {"eta": 0.0, "gamma": 0.0}},                # η = γ = 0 (diagnosis)
            "no-kd": {"hyper": {"alpha": 0.0, "beta": 0.0, "eta": 0.0, "gamma": 0.0}},   # no distillation at all
            "walk-labelled": {"server_walk_labelled": True},     # 2.1: the walk also covers the labelled inputs
            "align-mse": {"hyper": {"align": "mse"}},            # 2.2: cross-modal alignment of z_A(t), z_B(t)
            "align-cos": {"hyper": {"align": "cosine"}},
            "align-nce": {"hyper": {"align": "infonce"}},
            "kd-time": {"hyper": {"kd": "kl-time"}},             # 2.3: KD targets with signal at r = 2
            "kd-std": {"hyper": {"kd": "kl-std"}},
            "kd-mse": {"hyper": {"kd": "mse"}},
            "kd-mse-std": {"hyper": {"kd": "mse-std"}},
            "R4": {"hyper": {"global_epochs": 4}},
            "w-rounds": {"hyper": {"upload_weight": "rounds"}},   # 2.4: uploads weighted by the rounds a client trained
            "le4": {"hyper": {"local_epochs": 4}},               # 2.4: more local training
            "no-walk": {"server_proxy_walk": False},             # 2.5: the walk on this dataset
            "mmfedavg-le4": {"algorithm": "mmfedavg", "hyper": {"local_epochs": 4}},   # mmFedAvg's own settings
            "mmfedavg-w1": {"algorithm": "mmfedavg", "hyper": {"mm_weight": 1.0}},
            # issue 19 §2a: representation size r for every algorithm ("no-kd-server" is proxy-only under the protocol:
            # with eta = gamma = 0 the server's update is its proxy reconstruction alone, whatever the clients send)
            **{f"r{r}": {"rep_size": r} for r in (8, 16, 32)},
            **{f"mmfedavg-r{r}": {"algorithm": "mmfedavg", "rep_size": r} for r in (8, 16, 32)},
            **{f"no-kd-server-r{r}": {"rep_size": r, "hyper": {"eta": 0.0, "gamma": 0.0}} for r in (8, 16, 32)},
            "relational": {"hyper": {"kd": "relational"}},       # §2b: the server averages each client's structure
            "mask50": {"hyper": {"mask_ratio": 0.5}},            # §2d: clients' masked reconstruction, both algorithms
            "mmfedavg-mask50": {"algorithm": "mmfedavg", "hyper": {"mask_ratio": 0.5}},
            **{f"relational-r{r}": {"rep_size": r, "hyper": {"kd": "relational"}} for r in (8, 16)},
            "rep-fp16": {"layers": "rep", "wire_dtype": "float16"},   # §3: communication profiles
            "rep-fp32": {"layers": "rep", "wire_dtype": "float32"},
            "hidden-fp16-W12": {"layers": "rep+hidden", "wire_dtype": "float16", "proxy_windows": 12},
            "hidden-fp32": {"layers": "rep+hidden", "wire_dtype": "float32"},   # the default before issue 10 §3
            # measured on top of that previous default (rep+hidden), before the profile changed
            "no-kd-server-hidden": {"layers": "rep+hidden", "hyper": {"eta": 0.0, "gamma": 0.0}},
            "walk-labelled-hidden": {"layers": "rep+hidden", "server_walk_labelled": True},
            # issue 11 §2: whole walks
            "budget-off": {"hyper": {"local_step_budget": 0, "server_walk_step_budget": 0}},
        }.items()},
    }.items()},
}


# issue 19 §3: recipes of the deployed model (Hyper deploy_* fields), scored on the validation units
DEPLOY_RECIPES = {   # every recipe names its head and rounds, so a changed default never changes a recipe
    "frozen": {"deploy_head": "linear", "deploy_rounds": 0},   # the federation's head, frozen encoders (before §3)
    "head-mlp-50": {"deploy_head": "mlp", "deploy_rounds": 50, "deploy_tune_encoder": False},
    "ft-linear-25": {"deploy_head": "linear", "deploy_rounds": 25},
    "ft-linear-50": {"deploy_head": "linear", "deploy_rounds": 50},
    "ft-linear-100": {"deploy_head": "linear", "deploy_rounds": 100},
    "ft-linear-100-lr2e-3": {"deploy_head": "linear", "deploy_rounds": 100, "lr_deploy": 0.002},
    "ft-mlp-50": {"deploy_head": "mlp", "deploy_rounds": 50},   # the default since issue 19 §3
    "ft-mlp-100": {"deploy_head": "mlp", "deploy_rounds": 100},
    "ft-mlp-pool-50": {"deploy_head": "mlp-pool", "deploy_rounds": 50},   # z pooled over its last 24 steps
}
LABELLED_ONLY = "labelled-only"   # the reference every recipe must beat: no federation, the same labels


def sees_labelled_inputs(name: str) -> bool:
    """Whether the candidate's encoders train on the labelled set's inputs (those outside the validation units).

    Its CV probe over all labelled units would score units the encoders saw, so it is scored, and paired
    with the default, on the probe of the two validation units alone (fitted on the others; unseen inputs).
    """
    return bool(CANDIDATES[name].get("server_walk_labelled"))


def load_model(res, labelled):
    """The run's frozen final autoencoder."""
    import torch

    from fedmekt.learn.engine import build_model

    model = build_model(res.config, {m: labelled.modalities[m].shape[1] for m in res.config.pair})
    model.load_state_dict({k[len("autoencoder."):]: torch.from_numpy(v) for k, v in res.model_state.items()
                           if k.startswith("autoencoder.")})
    return model


def cv_score(model, cfg, labelled, label_names, folds: list[list[int]]) -> dict[str, float]:
    """Cross-validated probe by unit over ALL labelled units (the given folds) on a frozen final encoder."""
    import torch

    from fedmekt.experiment.validation import cv_probe

    cv = cv_probe(model, labelled, cfg, len(label_names), folds, torch.device("cpu"))
    return {f"cv_probe_{m}": v for m, v in cv.items()}


def diagnosis_model(name: str, cfg, split):
    """The final autoencoder of a diagnosis (DIAGNOSES) on the validation split.

    ``pooled-teacher*``: a FedMEKT-C server of ``cfg`` whose one client each round is the ``pooled`` autoencoder
    after that round; its embeddings of Π_t arrive as an A+B client's upload would (the wire's dtype, the server's
    teacher). If even this teacher, which holds every client's data, cannot lift the server above proxy-only, no
    FedMEKT client can through this channel."""
    from fedmekt.experiment.reference_rows import LOCAL_TRAINER, Pooled, round_plans
    from fedmekt.learn.engine import ServerEngine
    from fedmekt.wire.dtypes import wire_cast

    ref_cfg = replace(cfg, algorithm=LOCAL_TRAINER)
    pooled = Pooled(ref_cfg, split)
    student = (ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
               if name.startswith("pooled-teacher") else None)
    for plan, proxy_plan in zip(*round_plans(ref_cfg, split)):
        if name == "proxy-only":   # the pooled row's server, its proxy steps alone
            pooled.server.update_without_uploads(proxy_plan)
            continue
        pooled.train_round(plan, proxy_plan)
        if student is not None:
            student.begin_round(proxy_plan)
            teacher = {k: v for k, v in pooled.server.downstream(proxy_plan).items() if k.startswith("emb/")}
            student.absorb(proxy_plan.selected[0], cfg.pair, wire_cast(teacher, cfg.wire_format))
            student.finish_round(proxy_plan)
    return student.model if student is not None else pooled.model


def validation_split(split, seed: int):
    """The split with two labelled units moved to ``test`` (validation) and out of ``labelled``.

    UR Fall: one fall and one ADL recording (so both kinds are validated); other datasets: two subjects.
    """
    from fedmekt.experiment.validation import units_subset

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


SPLIT_RULES = ("proxy_units",)   # candidate keys that change the split, not the federation's config


def split_rules(name: str) -> dict:
    return {k: v for k, v in CANDIDATES[name].items() if k in SPLIT_RULES}


def smaller_proxy(split, n: int, seed: int):
    """The split with its proxy set cut to ``n`` seeded units (UR Fall: falls and ADLs in turn); clients unchanged."""
    from fedmekt.experiment.validation import units_subset

    units = split.proxy.units
    order = [int(i) for i in np.random.default_rng([seed, 79]).permutation(len(units))]
    if all(u.startswith(("fall", "adl")) for u in units):
        kinds = [[i for i in order if units[i].startswith(kind)] for kind in ("fall", "adl")]
        order = [i for pair in itertools.zip_longest(*kinds) for i in pair if i is not None]
    split.proxy = units_subset(split.proxy, sorted(order[:n]))
    return split


def make_config(name: str, seed: int, rounds: int, dataset: str):
    from fedmekt.config import FederationConfig, Hyper
    from sensors.datasets import dataset_info

    overrides = {"algorithm": "fedmekt-c", **{k: v for k, v in CANDIDATES[name].items() if k not in split_rules(name)}}
    hyper = Hyper(**overrides.pop("hyper", {}))
    return FederationConfig(federation="select", dataset=dataset, pair=dataset_info(dataset).default_pair,
                            rounds=rounds, seed=seed, device="cpu", hyper=hyper, **overrides)


def job_key(job: tuple) -> str:
    """Cache key of a job: the resolved config (so a changed default is a new key), the folds and the split rule
    (runs scored on reported test units, before they were reserved, are not reused)."""
    name, seed, rounds, dataset, folds = job
    return json.dumps([make_config(name, seed, rounds, dataset).to_dict(), folds, "reserved-test-units",
                       *([split_rules(name)] if split_rules(name) else []), *([name] if name in DIAGNOSES else [])],
                      sort_keys=True)


def one(job: tuple) -> dict:
    """One federated run on the validation split, scored by CV over all labelled units and on the validation units."""
    import torch

    from fedmekt.experiment.in_process import run_inprocess
    from fedmekt.experiment.validation import reported_test_groups, unit_folds
    from fedmekt.learn.engine import _PROBE, _seed
    from fedmekt.learn.evaluation import linear_probe
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    name, seed, rounds, dataset, folds = job
    torch.set_num_threads(1)
    cfg = make_config(name, seed, rounds, dataset)
    recordings = load_dataset(dataset)
    split = make_split(recordings, cfg.pair, seed=seed, reserved=reported_test_groups(recordings))
    all_labelled = split.labelled
    split = validation_split(split, seed)
    rules = split_rules(name)
    if "proxy_units" in rules:
        split = smaller_proxy(split, rules["proxy_units"], seed)
    out = {"candidate": name, "seed": seed, "val_units": list(split.test.units), "modalities": list(cfg.pair)}
    if name in DIAGNOSES:   # no federation: no rounds' metrics, no bytes
        model = diagnosis_model(name, cfg, split)
        final = linear_probe(model, split.labelled, split.test, cfg, len(split.label_names), torch.device("cpu"),
                             _seed(cfg, _PROBE))
    else:
        res = run_inprocess(cfg, split, progress=False)
        model, final = load_model(res, split.labelled), res.final
        out.update({f"val_paper_{m}": float(np.median([r[f"f1_paper_{m}"] for r in res.rows[-10:]])) for m in cfg.pair})
        out["bytes_total"] = (sum(r["bytes_up"] + r["bytes_down"] for r in res.rows)
                              + int(res.final.get("bytes_proxy_once", 0)))
    out.update({f"val_probe_{m}": final[f"probe_f1_weighted_{m}"] for m in cfg.pair})
    out["val_floor"] = final["majority_f1_weighted"]
    out.update(cv_score(model, cfg, all_labelled, split.label_names,
                        unit_folds(len(all_labelled.units), folds, seed)))
    out["score"] = float(np.mean([out[f"cv_probe_{m}"] for m in cfg.pair]))
    out["score_val"] = float(np.mean([out[f"val_probe_{m}"] for m in cfg.pair]))
    out["key"] = job_key(job)
    print(json.dumps(out), flush=True)
    return out


def deploy_key(recipe: str, seed: int, rounds: int, dataset: str) -> str:
    """Cache key of one deployed-model score: the resolved config with the recipe (labelled-only: the default's)."""
    cfg = make_config("default", seed, rounds, dataset)   # labelled-only ignores the recipe: keyed as "frozen"
    cfg = replace(cfg, hyper=replace(cfg.hyper, **DEPLOY_RECIPES.get(recipe, DEPLOY_RECIPES["frozen"])))
    return json.dumps([cfg.to_dict(), recipe, "deploy-validation-units"], sort_keys=True)


def deploy_one(job: tuple) -> list[dict]:
    """One default federation on the validation split; every deploy recipe and labelled-only trained on the
    split's labelled units and scored (the deployed weighted F1) on the two validation units."""
    import torch

    from fedmekt.experiment.in_process import run_inprocess
    from fedmekt.experiment.reference_rows import labelled_only
    from fedmekt.experiment.validation import reported_test_groups
    from fedmekt.learn.deploy import deploy
    from fedmekt.learn.engine import _DEPLOY, _seed, resolve_device
    from fedmekt.learn.evaluation import deployed_scores
    from fedmekt.learn.model import LinearHead
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    seed, rounds, dataset, recipes = job
    torch.set_num_threads(1)
    cfg = make_config("default", seed, rounds, dataset)
    recordings = load_dataset(dataset)
    split = validation_split(make_split(recordings, cfg.pair, seed=seed, reserved=reported_test_groups(recordings)),
                             seed)
    n_classes, device = len(split.label_names), resolve_device(cfg.device)
    res = run_inprocess(cfg, split, progress=False) if set(recipes) - {LABELLED_ONLY} else None
    out = []
    for recipe in recipes:
        if recipe == LABELLED_ONLY:
            sup = labelled_only(cfg, split)
            model, head, steps = sup.model, sup.head, sup.steps
        else:
            rcfg = replace(cfg, hyper=replace(cfg.hyper, **DEPLOY_RECIPES[recipe]))
            fed = load_model(res, split.labelled)
            fed_head = LinearHead(fed.rep_size, n_classes)
            fed_head.load_state_dict({k[len("head."):]: torch.from_numpy(v) for k, v in res.model_state.items()
                                      if k.startswith("head.")})
            dep = deploy(fed, fed_head, split.labelled, rcfg, n_classes, device, _seed(rcfg, _DEPLOY))
            model, head, steps = dep.model, dep.head, dep.steps
        scores = deployed_scores(model, head, split.test, cfg, n_classes, device)
        rec = {"candidate": recipe, "seed": seed, "val_units": list(split.test.units), "modalities": list(cfg.pair),
               "deploy_steps": steps, **{f"val_probe_{m}": scores[f"deployed_f1_weighted_{m}"] for m in cfg.pair}}
        rec["score_val"] = float(np.mean([rec[f"val_probe_{m}"] for m in cfg.pair]))
        rec["key"] = deploy_key(recipe, seed, rounds, dataset)
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


def deploy_summary(results: list[dict], recipes: list[str], against: str, default: str = "frozen") -> list[str]:
    """Deployed weighted F1 on the validation units per recipe, paired per seed with ``against`` (per modality
    too) and with the current ``default`` recipe (the protocol's adoption rule: interval above zero)."""
    from fedmekt.experiment.validation import decide

    mods = results[0]["modalities"]

    def by_seed(c: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in results if r["candidate"] == c}

    lines = ["deploy recipe | fine-tuning steps | " + " | ".join(f"deployed F1 {m} (validation units)" for m in mods)
             + f" | score − {against} [95 % CI] (mean of modalities) | " + " | ".join(f"{m} − {against}" for m in mods)
             + f" | score − {default} | decision"]
    for c in recipes:
        steps = np.mean([r["deploy_steps"] for r in results if r["candidate"] == c])
        cells = [f"{steps:.0f}"] + [_mean_std(list(by_seed(c, f"val_probe_{m}").values())) for m in mods]
        d = decide(by_seed(c, "score_val"), by_seed(against, "score_val"))
        per = [decide(by_seed(c, f"val_probe_{m}"), by_seed(against, f"val_probe_{m}")).difference.text() for m in mods]
        vs = decide(by_seed(c, "score_val"), by_seed(default, "score_val"))
        if c == against:
            cells += ["(reference)"] + [""] * len(mods)
        else:
            cells += [d.difference.text()] + per
        cells += (["(reference)", "–"] if c == default else
                  ["–", "–"] if c == LABELLED_ONLY else [vs.difference.text(), "ADOPT" if vs.adopt else "keep"])
        lines.append(f"{c} | " + " | ".join(cells))
    return lines


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def summary(results: list[dict], candidates: list[str], against: str) -> list[str]:
    """The table: score per modality (mean ± std over seeds), paired difference against ``against``, decision.

    The score is the CV probe over all labelled units, or the validation units' probe for a candidate whose
    encoders see labelled inputs (``sees_labelled_inputs``; its reference is then scored the same way).
    """
    from fedmekt.experiment.validation import decide, smallest_detectable

    mods = results[0]["modalities"]

    def by_seed(c: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in results if r["candidate"] == c}

    sent = {c: [r["bytes_total"] for r in results if r["candidate"] == c and "bytes_total" in r] for c in candidates}
    mib = {c: f"{np.mean(b) / 2**20:.1f}" if b else "–" for c, b in sent.items()}   # a diagnosis sends nothing
    lines = ["candidate | MiB over the run | " + " | ".join(f"CV probe {m}" for m in mods)
             + f" | score − {against} [95 % CI] (mean of modalities) | " + " | ".join(f"{m} − {against}" for m in mods)
             + " | resolution | decision"]
    for c in candidates:
        val = sees_labelled_inputs(c) or sees_labelled_inputs(against)
        score, prefix = ("score_val", "val_probe_") if val else ("score", "cv_probe_")
        cells = [mib[c]] + [_mean_std(list(by_seed(c, prefix + m).values())) for m in mods]
        if c == against:
            lines.append(f"{c} | " + " | ".join(cells) + " | (reference) |" + " |" * len(mods) + " | –")
            continue
        mine, ref = by_seed(c, score), by_seed(against, score)
        d = decide(mine, ref)
        diffs = [mine[s] - ref[s] for s in mine if s in ref]
        per = [decide(by_seed(c, prefix + m), by_seed(against, prefix + m)).difference.text() for m in mods]
        lines.append(f"{c}{' (validation units)' if val else ''} | " + " | ".join(cells) + f" | {d.difference.text()} | "
                     + " | ".join(per) + f" | ±{smallest_detectable(diffs, len(diffs)):.3f} | "
                     + ("–" if c in DIAGNOSES else "ADOPT" if d.adopt else "keep"))   # a diagnosis is no option
    return lines


def main() -> None:
    from fedmekt.errors import UserError
    from fedmekt.experiment.validation import check_selection_seeds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ur_fall", help="ur_fall (acce-depth) or hapt (acce-gyro)")
    parser.add_argument("--seeds", default="100,101,102,103,104", help="selection seeds, all >= 100")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--folds", type=int, default=0, help="0 = leave one labelled unit out, else K folds of units")
    parser.add_argument("--candidates", default="default,walk-rep-fp16", help=f"names from: {', '.join(CANDIDATES)}")
    parser.add_argument("--against", default="default", help="the candidate every other is paired with")
    parser.add_argument("--results", default="", help="JSONL cache of runs: reused when the resolved config, "
                        "folds match, new runs appended")
    parser.add_argument("--cached-only", action="store_true", help="run nothing: the table from --results alone")
    parser.add_argument("--deploy", default="", help="instead of federation candidates: deployed-model recipes "
                        f"({', '.join(DEPLOY_RECIPES)}) on one default federation per seed, each paired with "
                        f"--against (default here: {LABELLED_ONLY}) on the validation units")
    args = parser.parse_args()
    if args.deploy:
        return deploy_main(args)
    try:
        seeds = check_selection_seeds(int(s) for s in args.seeds.split(","))
        candidates = list(dict.fromkeys([args.against, *args.candidates.split(",")]))
        unknown = [c for c in candidates if c not in CANDIDATES]
        if unknown:
            raise UserError(f"unknown candidate(s) {unknown}; choose from {', '.join(CANDIDATES)}")
    except (UserError, ValueError) as exc:
        sys.exit(f"select_fedmekt_c: error: {exc}")
    jobs = [(c, s, args.rounds, args.dataset, args.folds) for s in seeds for c in candidates]
    cached: dict[str, dict] = {}
    if args.results and Path(args.results).exists():
        for line in Path(args.results).read_text().splitlines():
            rec = json.loads(line)
            cached[rec["key"]] = rec
    todo = [] if args.cached_only else [j for j in jobs if job_key(j) not in cached]
    jobs = [j for j in jobs if job_key(j) in cached or j in todo]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} from {args.results or 'no cache'}", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        for rec in pool.map(one, todo):
            cached[rec["key"]] = rec
            if args.results:
                with open(args.results, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
    results = [dict(cached[job_key(j)], candidate=j[0]) for j in jobs]
    print("\n" + "\n".join(summary(results, candidates, args.against)))


def deploy_main(args) -> None:
    """``--deploy``: every recipe and labelled-only per selection seed (one federation per seed), then the table."""
    from fedmekt.errors import UserError
    from fedmekt.experiment.validation import check_selection_seeds

    against = LABELLED_ONLY if args.against == "default" else args.against
    try:
        seeds = check_selection_seeds(int(s) for s in args.seeds.split(","))
        recipes = list(dict.fromkeys([against, *args.deploy.split(",")]))
        unknown = [r for r in recipes if r not in DEPLOY_RECIPES and r != LABELLED_ONLY]
        if unknown:
            raise UserError(f"unknown deploy recipe(s) {unknown}; choose from {', '.join(DEPLOY_RECIPES)}, "
                            f"{LABELLED_ONLY}")
    except (UserError, ValueError) as exc:
        sys.exit(f"select_fedmekt_c: error: {exc}")
    cached: dict[str, dict] = {}
    if args.results and Path(args.results).exists():
        for line in Path(args.results).read_text().splitlines():
            rec = json.loads(line)
            cached[rec["key"]] = rec
    todo = [] if args.cached_only else [
        (s, args.rounds, args.dataset, tuple(r for r in recipes if deploy_key(r, s, args.rounds, args.dataset)
                                             not in cached)) for s in seeds]
    todo = [j for j in todo if j[3]]
    print(f"{len(seeds) * len(recipes)} scores, {len(todo)} seeds to run", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        for recs in pool.map(deploy_one, todo):
            for rec in recs:
                cached[rec["key"]] = rec
                if args.results:
                    with open(args.results, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
    results = [dict(cached[k], candidate=r) for s in seeds for r in recipes
               if (k := deploy_key(r, s, args.rounds, args.dataset)) in cached]
    print("\n" + "\n".join(deploy_summary(results, recipes, against)))


if __name__ == "__main__":
    main()
