"""Reference rows of a reproduction, on the same split, test set and probe as the federated runs.

They answer "does federation help?": each is what some party gets without (part of) the federation.
Every row is scored by THE probe of the tables (``fedmekt.learn.evaluation.modality_probes``: per test modality a
fresh linear head on that modality's features), so rows differ only in the features they offer.

* ``raw-features``: the unencoded per-step features (no training);
* ``labelled-only``: the federation's encoder and head trained supervised, end to end, on the server's
  labelled set alone, with the classifier's schedule of the whole run (every round's ``classifier_epochs``
  walks per label modality): what a user gets with no unlabelled data and no federation;
* ``proxy-only``: the server's autoencoder trained on its proxy set alone with FedMEKT-C's server steps of
  every round (the same draws; no knowledge from clients): what the server gets without clients;
* ``local-only``: every client trains its own autoencoder in exactly the rounds the federation selects it,
  with the same seeded draws and local steps, and never exchanges anything; the row is the mean, over the
  clients holding a test modality, of each one's probe of that modality;
* ``pooled``: ONE autoencoder takes every local step of the federation (same clients, rounds, draws) and
  every round's proxy-only server steps: the pooled client data and the proxy set, the federation's total
  steps, nothing averaged;
* ``supervised-ceiling``: the same encoder and head trained supervised on every client's data WITH its
  labels (the clients' local steps of the run) and the labelled set (labelled-only's steps). In a deployment
  those labels never leave a device: the row is the upper reference, not something a federation can reach.

Local reconstruction is mmFedAvg's client step (split-autoencoder reconstruction, plus ``hyper.align``'s
cross-modal term on an A+B client when set, ``ClientEngine``); proxy-only's server steps then align Π_t's
modalities as FedMEKT-C's server does.
Each record's ``local_steps`` counts client-side optimizer steps, ``server_steps`` the server-side ones
(proxy or labelled set). The two supervised rows train a head with their encoder, so they also carry the
deployed model's figures (``deployed_*``), comparable with a federation's package. No I/O here.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from fedmekt.learn.algorithms.base import ModuleOptimizers, Party, dec, enc, epoch_steps, private_epoch
from fedmekt.concurrency import seeded_torch
from fedmekt.config import FederationConfig
from fedmekt.learn.engine import (
    _CLASSIFIER, _CLIENT, _HEAD, _PROBE, ClientEngine, RoundPlan, ServerEngine, _seed, build_model, client_key,
    client_view, resolve_device, rng_for,
)
from fedmekt.learn.evaluation import deployed_scores, linear_probe, raw_probe, train_classifier_round
from fedmekt.learn.losses import classifier_loss
from fedmekt.learn.model import LinearHead, SplitAutoencoder
from fedmekt.learn.numerics import numeric_environment
from sensors.partition import FederatedSplit

REFERENCES = ("raw-features", "labelled-only", "proxy-only", "local-only", "pooled", "supervised-ceiling")
LOCAL_TRAINER = "mmfedavg"   # whose client step trains the reference autoencoders
PROXY_SERVER = "fedmekt-c"   # whose server steps train proxy-only (and pooled's server share)


def _record(cfg: FederationConfig, name: str, start: float, metrics: dict, steps: int, server_steps: int = 0) -> dict:
    return {"dataset": cfg.dataset, "pair": "-".join(cfg.pair), "seed": cfg.seed, "clients": list(cfg.clients),
            "per_round": cfg.per_round, "rounds": cfg.rounds, "partition": cfg.partition, "reference": True,
            "local_trainer": LOCAL_TRAINER, "run": f"{name}-seed{cfg.seed}", "algorithm": name, "variant": name,
            "rep_size": cfg.resolved_rep_size(), "local_steps": steps, "server_steps": server_steps, **metrics,
            "numerics": numeric_environment(resolve_device(cfg.device)), "wall_s": round(time.perf_counter() - start, 2)}


def raw_features_final(cfg: FederationConfig, split: FederatedSplit) -> dict:
    """The ``raw-features`` row alone (one probe per modality, seconds): what ``simulate`` sets beside its result."""
    start = time.perf_counter()
    probe = raw_probe(split.labelled, split.test, cfg, len(split.label_names), resolve_device(cfg.device),
                      _seed(cfg, _PROBE))   # the federated runs' probe seed
    return _record(cfg, "raw-features", start, probe, 0)


def reference_finals(cfg: FederationConfig, split: FederatedSplit, names: tuple[str, ...] = REFERENCES) -> list[dict]:
    """``final.jsonl`` records of the reference rows ``names`` (default every one) for ``cfg``'s seed, rounds and
    client sampling."""
    unknown = sorted(set(names) - set(REFERENCES))
    if unknown:
        raise ValueError(f"unknown reference rows {unknown}; choose from {', '.join(REFERENCES)}")
    torch.set_num_threads(cfg.threads)   # every row in the run's arithmetic (fedmekt/learn/numerics.py), as an engine
    out = [raw_features_final(cfg, split)] if "raw-features" in names else []
    cfg = replace(cfg, algorithm=LOCAL_TRAINER)
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plans, proxy_plans = round_plans(cfg, split)
    proxy_server = _proxy_server(cfg, split)
    n_classes, seed = len(split.label_names), _seed(cfg, _PROBE)   # the federated runs' probe seed

    def record(name: str, start: float, model: SplitAutoencoder, steps: int, server_steps: int = 0) -> dict:
        return _record(cfg, name, start, server_probe(server, model), steps, server_steps)

    def supervised_record(name: str, start: float, trained: _Supervised, steps: int, server_steps: int) -> dict:
        """A supervised row has a head: it is a deployable model, scored as the federation's package is."""
        rec = record(name, start, trained.model, steps, server_steps)
        return {**rec, **deployed_scores(trained.model, trained.head, split.test, cfg, n_classes, trained.device)}

    if "labelled-only" in names:
        start = time.perf_counter()
        supervised = labelled_only(cfg, split)
        out.append(supervised_record("labelled-only", start, supervised, 0, supervised.steps))

    if "proxy-only" in names:
        start = time.perf_counter()
        for plan in proxy_plans:
            proxy_server.update_without_uploads(plan)
        out.append(record("proxy-only", start, proxy_server.model, 0, server_optimizer_steps(proxy_server.party)))

    if "local-only" in names:
        start = time.perf_counter()
        locals_ = {c.client_id: ClientEngine(cfg, c.client_id, c.modalities, split.channels, None) for c in split.clients}
        for plan in plans:
            _train_round(locals_, plan, split)
        probes = {cid: linear_probe(e.model, split.labelled, split.test, cfg, n_classes, e.device, seed,
                                    modalities=e.modalities)
                  for cid, e in locals_.items()}
        out.append(_record(cfg, "local-only", start, _mean_over_holders(probes, locals_, cfg),
                           sum(optimizer_steps(e.party) for e in locals_.values())))

    if "pooled" in names:
        start = time.perf_counter()
        pooled = Pooled(cfg, split)
        for plan, proxy_plan in zip(plans, proxy_plans):
            pooled.train_round(plan, proxy_plan)
        out.append(record("pooled", start, pooled.model, optimizer_steps(pooled.client_party),
                          server_optimizer_steps(pooled.server.party)))

    if "supervised-ceiling" in names:
        start = time.perf_counter()
        ceiling = _Supervised(cfg, split)
        for plan in plans:
            for cid in plan.selected:
                ceiling.client_round(plan.round, cid)
            ceiling.labelled_round(plan.round)
        out.append(supervised_record("supervised-ceiling", start, ceiling, ceiling.client_steps,
                                     ceiling.steps - ceiling.client_steps))
    return out


def round_plans(cfg: FederationConfig, split: FederatedSplit) -> tuple[list[RoundPlan], list[RoundPlan]]:
    """Every round's plan of ``cfg`` (who trains: the same draw for every algorithm) and FedMEKT-C's plan of the
    round (the same clients, and Π_t's draws)."""
    ids = sorted(c.client_id for c in split.clients)
    planners = (ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled),
                _proxy_server(cfg, split))
    plans, proxy_plans = ([p.plan_round(r, ids) for r in range(cfg.rounds)] for p in planners)
    return plans, proxy_plans


def labelled_only(cfg: FederationConfig, split: FederatedSplit) -> _Supervised:
    """The ``labelled-only`` model: the federation's initial encoders and head trained end to end on the labelled
    set alone, every round's classifier walks of the run (the same seeded draws)."""
    supervised = _Supervised(cfg, split)
    for round_ in range(cfg.rounds):
        supervised.labelled_round(round_)
    return supervised


class Pooled:
    """The ``pooled`` row's one autoencoder, a round at a time: every local step of the round's selected clients
    (their draws and modalities, one shared model and client optimizers), then proxy-only's server steps of the
    round (the server's optimizers). ``cfg`` is the reference rows' (``LOCAL_TRAINER``'s client step)."""

    def __init__(self, cfg: FederationConfig, split: FederatedSplit) -> None:
        self.split = split
        self.server = _proxy_server(cfg, split)
        self.model = self.server.model   # the same initialisation (build_model) as every other row
        central = ClientEngine(cfg, "pooled", cfg.pair, split.channels, None)
        self.client_party = replace(central.party, model=self.model,
                                    optim=ModuleOptimizers(self.model, cfg.hyper.lr_local))
        self.views = {c.client_id: ClientEngine(cfg, c.client_id, c.modalities, split.channels, None)
                      for c in split.clients}
        for view in self.views.values():
            view.model, view.party = self.model, replace(self.client_party, modalities=view.modalities)

    def train_round(self, plan: RoundPlan, proxy_plan: RoundPlan) -> None:
        _train_round(self.views, plan, self.split)
        self.server.update_without_uploads(proxy_plan)


def _proxy_server(cfg: FederationConfig, split: FederatedSplit) -> ServerEngine:
    """A FedMEKT-C server of ``cfg`` (same seed, so the same initial model and draws) that no client reaches."""
    return ServerEngine(replace(cfg, algorithm=PROXY_SERVER), split.channels, split.label_names, split.proxy,
                        split.labelled, split.test)


def _train_round(engines: dict[str, ClientEngine], plan: RoundPlan, split: FederatedSplit) -> None:
    """Every planned local step of a round, each engine from its own current parameters (nothing exchanged)."""
    data = {c.client_id: c.data for c in split.clients}
    for cid in plan.selected:
        e = engines[cid]
        own = client_view(e.algorithm.downstream(e.party, None), e.modalities)
        e.train_round(plan, own, data[cid])


class _Supervised:
    """The federation's model (same initialisation) and a head, trained end to end with labels (cross-entropy).

    ``labelled_round`` is the classifier's walk of the labelled set in a round (same seeded draws);
    ``client_round`` a client's local walk of a round (same draws as its reconstruction steps) on its own
    data with its labels. Both count their optimizer steps.
    """

    def __init__(self, cfg: FederationConfig, split: FederatedSplit) -> None:
        self.cfg, self.split = cfg, split
        self.device = resolve_device(cfg.device)
        self.model = build_model(cfg, split.channels).to(self.device)
        with seeded_torch(_seed(cfg, _HEAD)):   # the federation's head initialisation
            self.head = LinearHead(self.model.rep_size, len(split.label_names)).to(self.device)
        params = [p for m in cfg.pair for p in self.model.encoders[m].parameters()] + list(self.head.parameters())
        self.optim = torch.optim.Adam(params, lr=cfg.hyper.lr_classifier)
        self._data = {c.client_id: c for c in split.clients}
        self.steps = self.client_steps = 0

    def labelled_round(self, round_: int) -> None:
        before = self._count()
        train_classifier_round(self.model, self.head, self.optim, self.split.labelled, self.cfg,
                               rng_for(self.cfg.seed, _CLASSIFIER, round_), self.device, tune_encoder=True)
        self.steps += self._count() - before

    def client_round(self, round_: int, client_id: str) -> None:
        c, h = self._data[client_id], self.cfg.hyper
        rng = rng_for(self.cfg.seed, _CLIENT, client_key(client_id), round_)
        mods = tuple(m for m in self.cfg.pair if m in c.modalities)
        for _ in range(h.local_epochs):
            for xs, ys in private_epoch(c.data, mods, self.cfg, rng, self.device,
                                        epoch_steps(h.local_step_budget, h.local_epochs)):
                if not bool((ys >= 0).any()):
                    continue
                loss = sum(classifier_loss(self.head(self.model.encode(xs[m], m)[0]), ys) for m in mods)
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
                self.optim.step()
                self.steps += 1
                self.client_steps += 1

    def _count(self) -> int:
        state = self.optim.state.get(next(iter(self.head.parameters())), {})
        return int(torch.as_tensor(state.get("step", 0)).item())


def server_probe(server: ServerEngine, model: SplitAutoencoder) -> dict:
    """The federated runs' final probe (same seed, same modalities) on ``model``'s encoders."""
    server.model.load_state_dict(model.state_dict())
    return server.probe()


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


def server_optimizer_steps(party: Party) -> int:
    """FedMEKT-C's server steps every decoder in each step, so the first decoder's Adam counts."""
    state = party.optim.optimizers[dec(party.model.modalities[0])].state
    return max((int(torch.as_tensor(s["step"]).item()) for s in state.values()), default=0)
