"""Reference rows of a reproduction, on the same split and test set as the federated runs.

A federated encoder is only worth its bytes if it beats what needs no federation, so every table carries:

* ``raw-features``: the final linear probe on the unencoded per-step features (one head per modality);
* ``local-only``: every client trains its own autoencoder in exactly the rounds the federation selects it,
  with the same seeded draws and local steps, and never exchanges anything; the row is the mean, over the
  clients holding a test modality, of each one's probe (trained on the modalities it holds);
* ``centralized``: ONE autoencoder takes every local step of the federation (same clients, rounds, draws and
  number of steps), i.e. it trains on the pooled client data with nothing averaged — the upper bound.

Local training is mmFedAvg's client step (plain split-autoencoder reconstruction, ``ClientEngine``), so
the rows cost about one federated run's client work and no server rounds. No I/O here.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from fedmekt.algorithms.base import Party, enc
from fedmekt.config import FederationConfig
from fedmekt.engine import _PROBE, ClientEngine, ServerEngine, _seed, client_view, resolve_device
from fedmekt.evaluation import linear_probe, raw_probe
from sensors.partition import FederatedSplit

REFERENCES = ("raw-features", "local-only", "centralized")
LOCAL_TRAINER = "mmfedavg"   # whose client step trains the reference autoencoders


def _record(cfg: FederationConfig, name: str, start: float, metrics: dict, steps: int) -> dict:
    return {"dataset": cfg.dataset, "pair": "-".join(cfg.pair), "seed": cfg.seed, "clients": list(cfg.clients),
            "per_round": cfg.per_round, "rounds": cfg.rounds, "partition": cfg.partition, "reference": True,
            "local_trainer": LOCAL_TRAINER, "run": f"{name}-seed{cfg.seed}", "algorithm": name, "variant": name,
            "local_steps": steps, **metrics, "wall_s": round(time.perf_counter() - start, 2)}


def raw_features_final(cfg: FederationConfig, split: FederatedSplit) -> dict:
    """The ``raw-features`` row alone (one probe per modality, seconds): what ``simulate`` sets beside its result."""
    start = time.perf_counter()
    probe = raw_probe(split.labelled, split.test, cfg, len(split.label_names), resolve_device(cfg.device),
                      _seed(cfg, _PROBE))   # the federated runs' probe seed
    return _record(cfg, "raw-features", start, probe, 0)


def reference_finals(cfg: FederationConfig, split: FederatedSplit) -> list[dict]:
    """``final.jsonl`` records of the three reference rows for ``cfg``'s seed, rounds and client sampling."""
    out = [raw_features_final(cfg, split)]
    cfg = replace(cfg, algorithm=LOCAL_TRAINER)
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    ids = sorted(c.client_id for c in split.clients)
    plans = [server.plan_round(r, ids) for r in range(cfg.rounds)]
    n_classes, seed = len(split.label_names), _seed(cfg, _PROBE)   # the federated runs' probe seed

    def record(name: str, start: float, metrics: dict, steps: int) -> dict:
        return _record(cfg, name, start, metrics, steps)

    start = time.perf_counter()
    locals_ = {c.client_id: ClientEngine(cfg, c.client_id, c.modalities, split.channels, None) for c in split.clients}
    _train(locals_, plans, split)
    probes = {cid: linear_probe(e.model, split.labelled, split.test, cfg, n_classes, e.device, seed,
                                train_modalities=tuple(m for m in cfg.label_modalities if m in e.modalities)
                                or e.modalities, test_modalities=e.modalities)
              for cid, e in locals_.items()}
    out.append(record("local-only", start, _mean_over_holders(probes, locals_, cfg),
                      sum(optimizer_steps(e.party) for e in locals_.values())))

    start = time.perf_counter()
    central = ClientEngine(cfg, "centralized", cfg.pair, split.channels, None)
    views = {c.client_id: ClientEngine(cfg, c.client_id, c.modalities, split.channels, None) for c in split.clients}
    for view in views.values():   # each client's draws and modalities, the one shared model and optimizers
        view.model, view.party = central.model, replace(central.party, modalities=view.modalities)
    _train(views, plans, split)
    out.append(record("centralized", start,
                      server_probe(server, central.model), optimizer_steps(central.party)))
    return out


def _train(engines: dict[str, ClientEngine], plans, split: FederatedSplit) -> None:
    """Every planned local step, each engine starting from its own current parameters (nothing exchanged)."""
    data = {c.client_id: c.data for c in split.clients}
    for plan in plans:
        for cid in plan.selected:
            e = engines[cid]
            own = client_view(e.algorithm.downstream(e.party, None), e.modalities)
            e.train_round(plan, own, data[cid])


def server_probe(server: ServerEngine, model) -> dict:
    """The federated runs' final probe (same seed, same modalities) on ``model``'s encoders."""
    server.model.load_state_dict(model.state_dict())
    return server.final_evaluation()


def _mean_over_holders(probes: dict[str, dict], engines: dict[str, ClientEngine], cfg: FederationConfig) -> dict:
    """Per test modality, the mean of the probes of the clients holding it; the floor is the same for all."""
    first = next(iter(probes.values()))
    out = {k: v for k, v in first.items() if k.startswith("majority_")}
    for m in cfg.pair:
        holders = [p for cid, p in probes.items() if m in engines[cid].modalities]
        for k in ("f1_weighted", "f1_macro", "accuracy"):
            out[f"probe_{k}_{m}"] = float(np.mean([p[f"probe_{k}_{m}"] for p in holders])) if holders else float("nan")
        out[f"clients_probed_{m}"] = len(holders)
    return out


def optimizer_steps(party: Party) -> int:
    """Optimizer steps taken: mmFedAvg's client steps exactly one encoder per step, so the encoders' Adam counts."""
    total = 0
    for m in party.model.modalities:
        state = party.optim.optimizers[enc(m)].state
        total += max((int(torch.as_tensor(s["step"]).item()) for s in state.values()), default=0)
    return total
