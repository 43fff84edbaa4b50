"""Transport-agnostic round engine: the in-process reproduction and the MQTT deployment call exactly this.

``ServerEngine`` plans rounds, produces downstream knowledge, folds uploads into a streaming mean and runs
the server-side update, the generalized classifier and the evaluation. ``ClientEngine`` turns
(plan, downstream, private data) into an upload. Only named float32 numpy arrays (``Tensors``) cross
between them; the in-process runs pass them through ``fedmekt.wire.dtypes.wire_cast``, so fp16 or int8 on the wire
is simulated exactly.

Determinism (bit for bit on CPU with the same thread count, in one process or many):

* every model starts from ONE initialisation built from ``cfg.seed`` (``build_model``), so a client in
  another process rebuilds it identically; FedMEKT-C's fixed projections likewise (O4);
* client draws come from a generator seeded by (seed, purpose, crc32(client id), round) — training and the
  optional upload noise (``embedding_noise``) use separate purposes, so σ = 0 leaves uploads bit-identical
  and noise never changes what a client trains; server draws (client
  selection, proxy windows Π_t, distillation order, classifier batches) from generators seeded by
  (seed, purpose, round) — a fresh draw every round (fixes B4), stateless so a resumed server continues
  identically;
* client selection draws among the SORTED online ids; the selection is returned sorted.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedmekt import device_classes
from fedmekt.learn import robust
from fedmekt.learn.class_models import ClassModel
from fedmekt.learn.algorithms import get_algorithm
from fedmekt.learn.algorithms.base import (
    ModuleOptimizers, Party, Projections, ProxyWindows, Tensors, check_tensors, load_optimizer_arrays,
    optimizer_arrays, to_numpy,
)
from fedmekt.concurrency import seeded_torch
from fedmekt.config import FederationConfig
from fedmekt.run_info import RunInfo
from fedmekt.learn.deploy import DeployedModel
from fedmekt.learn.deployables import Deployables, DeploySource, GlobalState
from fedmekt.learn.evaluation import deployed_scores, linear_probe, paper_probe, train_classifier_round
from fedmekt.learn.model import LinearHead, SplitAutoencoder
from fedmekt.learn.streaming import StreamingMean
from sensors.partition import Normalizer, Partition
from sensors.windowing import window_starts

# purposes of the seeded generators (first words of every SeedSequence after the seed)
_MODEL, _HEAD, _PROJ, _PROBE, _DEPLOY = 11, 12, 13, 14, 15
_SELECT, _PROXY, _SERVER, _CLASSIFIER, _CLIENT, _NOISE, _CLASS = 21, 22, 23, 24, 25, 26, 27


def rng_for(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w) for w in words])))


def client_key(client_id: str) -> int:
    """Stable integer for a client id (part of its seed): same in every process."""
    return zlib.crc32(client_id.encode())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from fedmekt.errors import UserError

        raise UserError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def build_model(cfg: FederationConfig, channels: dict[str, int], device_class: str = device_classes.DEFAULT
                ) -> SplitAutoencoder:
    """The one initial model every party of ``device_class`` starts from, rebuilt from ``cfg.seed`` (global RNG
    untouched); the standard class is ``cfg.hidden`` wide."""
    with seeded_torch(_seed(cfg, _MODEL)):
        return SplitAutoencoder({m: channels[m] for m in cfg.pair}, cfg.resolved_rep_size(),
                                device_classes.hidden_for(cfg.hidden, device_class))


def _seed(cfg: FederationConfig, purpose: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, purpose]).generate_state(1)[0])


_ABSORBED = "meta/absorbed_rounds/"  # checkpoint keys: rounds absorbed per client (hyper.upload_weight)


def window_key(modality: str) -> str:
    """Downstream key of the round's raw proxy windows of ``modality`` (``proxy_delivery`` "round")."""
    return f"proxy/{modality}/x"


def client_view(tensors: Tensors, modalities: Sequence[str]) -> Tensors:
    """The part of the downstream knowledge a client holding ``modalities`` needs (and is sent)."""
    prefixes = tuple(f"emb/{m}/" for m in modalities) + tuple(window_key(m) for m in modalities) + tuple(
        f"param/{kind}.{m}." for m in modalities for kind in ("encoders", "decoders"))
    return {k: v for k, v in tensors.items() if k.startswith(prefixes)}


@dataclass
class RoundPlan:
    """The round announcement: who trains and on which proxy windows (small, JSON-able)."""

    round: int
    selected: tuple[str, ...]
    proxy_windows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    window: int = 24
    algorithm: str = "fedmekt-c"

    def to_json(self) -> dict:
        return {"round": self.round, "selected": list(self.selected),
                "proxy_windows": [int(s) for s in self.proxy_windows], "window": self.window,
                "algorithm": self.algorithm}

    @classmethod
    def from_json(cls, d: dict) -> "RoundPlan":
        """Validate an announcement from the network; ValueError with the reason."""
        if not isinstance(d, dict):
            raise ValueError("plan must be a JSON object")
        try:
            rnd, sel, starts, window, algo = d["round"], d["selected"], d["proxy_windows"], d["window"], d["algorithm"]
        except KeyError as exc:
            raise ValueError(f"plan lacks {exc.args[0]!r}") from None
        if not (isinstance(rnd, int) and not isinstance(rnd, bool) and rnd >= 0):
            raise ValueError("plan round must be a non-negative integer")
        if not (isinstance(sel, list) and all(isinstance(s, str) and s for s in sel) and len(set(sel)) == len(sel)):
            raise ValueError("plan selected must be a list of distinct client ids")
        if not (isinstance(starts, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                 for s in starts)):
            raise ValueError("plan proxy_windows must be a list of non-negative integers")
        if not (isinstance(window, int) and window >= 1) or not isinstance(algo, str):
            raise ValueError("plan window must be a positive integer and algorithm a string")
        return cls(rnd, tuple(sel), np.asarray(starts, dtype=np.int64), window, algo)


def _check_plan(cfg: FederationConfig, plan: RoundPlan, proxy: Partition | None) -> None:
    """The plan is for this federation's algorithm and window, and its windows lie in the proxy set (if held)."""
    if plan.algorithm != cfg.algorithm or plan.window != cfg.window:
        raise ValueError(f"plan is for {plan.algorithm}/window {plan.window}, this party runs "
                         f"{cfg.algorithm}/window {cfg.window}")
    if proxy is not None and plan.proxy_windows.size and plan.proxy_windows.max() + plan.window > len(proxy):
        raise ValueError("plan proxy window lies outside the proxy set")


class ServerEngine:
    """Server side of one federation (aggregator or in-process reproduction)."""

    def __init__(self, cfg: FederationConfig, channels: dict[str, int], label_names: Sequence[str],
                 proxy: Partition, labelled: Partition, test: Partition | None = None,
                 normalizer: Normalizer | None = None, rate_hz: float = 0.0) -> None:
        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.channels = {m: int(channels[m]) for m in cfg.pair}
        self.label_names = tuple(label_names)
        self.proxy, self.labelled, self.test = proxy, labelled, test
        self.normalizer, self.rate_hz = normalizer, rate_hz
        self.device = resolve_device(cfg.device)
        self.algorithm = get_algorithm(cfg.algorithm)
        self.model = build_model(cfg, self.channels, device_classes.global_class(cfg.fleet)).to(self.device)
        with seeded_torch(_seed(cfg, _HEAD)):
            self.head = LinearHead(self.model.rep_size, len(self.label_names)).to(self.device)
        self.head_optim = torch.optim.Adam(self.head.parameters(), lr=cfg.hyper.lr_classifier)
        self.party = Party(cfg, self.model, ModuleOptimizers(self.model, cfg.hyper.lr_global),
                           Projections(self.model.rep_size, self.model.hidden, _seed(cfg, _PROJ)).to(self.device),
                           self.device, tuple(cfg.pair), unlabelled=labelled)
        self.proxy_delivery = cfg.proxy_delivery_for(len(proxy))
        self._starts = window_starts(proxy, cfg.window, 1) if cfg.is_embedding else np.zeros(0, np.int64)
        if cfg.is_embedding and self._starts.size == 0:
            raise ValueError(f"the proxy set has no segment of {cfg.window} rows")
        self.rounds_completed = 0
        self._mean: StreamingMean | robust.RoundUploads | None = None
        self._absorbed: set[str] = set()
        self._absorbed_rounds: dict[str, int] = {}  # client -> rounds absorbed so far (hyper.upload_weight)
        self._reference: tuple[int, dict[str, float]] | None = None  # (round, per-key upload scale)
        self._knowledge: Tensors = {}  # the server's downstream of the round in ``_reference``
        self._proxy_cache: tuple[int, ProxyWindows] | None = None
        self.deployables = Deployables(DeploySource(
            cfg, len(self.label_names), proxy, labelled, self.device, self.algorithm.width_sliced,
            lambda device_class: build_model(cfg, self.channels, device_class).to(self.device),
            lambda *words: rng_for(cfg.seed, _CLASS, *words), _seed(cfg, _DEPLOY)))

    # ---- planning -----------------------------------------------------------------------------------
    def plan_round(self, round_: int, online: Sequence[str]) -> RoundPlan:
        """Fresh seeded draw of ``per_round`` clients among the online ids, and of the proxy windows Π_t."""
        ids = sorted(set(online))
        if not ids:
            raise ValueError("no client is online")
        pick = rng_for(self.cfg.seed, _SELECT, round_).choice(len(ids), min(self.cfg.per_round, len(ids)),
                                                              replace=False)
        starts = np.zeros(0, dtype=np.int64)
        if self.cfg.is_embedding:
            n = self.cfg.proxy_windows
            starts = np.sort(rng_for(self.cfg.seed, _PROXY, round_).choice(
                self._starts, n, replace=self._starts.size < n)).astype(np.int64)
        return RoundPlan(round_, tuple(sorted(ids[i] for i in pick)), starts, self.cfg.window, self.cfg.algorithm)

    def _proxy(self, plan: RoundPlan) -> ProxyWindows | None:
        if not self.cfg.is_embedding:
            return None
        if self._proxy_cache is None or self._proxy_cache[0] != plan.round:
            self._proxy_cache = (plan.round, ProxyWindows.cut(self.proxy, plan.proxy_windows, plan.window,
                                                              self.cfg.pair, self.device))
        return self._proxy_cache[1]

    def downstream(self, plan: RoundPlan) -> Tensors:
        """Global embeddings of Π_t (FedMEKT) or global parameters (baselines); filter with ``client_view``.

        With ``proxy_delivery`` "round" the raw windows of Π_t travel with them (``proxy/<m>/x``): clients
        then never hold the proxy set.
        """
        _check_plan(self.cfg, plan, self.proxy)
        proxy = self._proxy(plan)
        down = self.algorithm.downstream(self.party, proxy)
        self._reference = (plan.round, robust.reference(down))
        self._knowledge = self.algorithm.teacher_basis(self.party, proxy, down)   # a teacher view fits to them
        if self.proxy_delivery == "round":
            down.update({window_key(m): to_numpy(proxy.x[m]) for m in self.cfg.pair})
        return down

    def expected_upload(self, modalities: tuple[str, ...], plan: RoundPlan, device_class: str | None = None
                        ) -> dict[str, tuple[tuple[int, ...], str]]:
        """Names and shapes of a valid upload from a client holding ``modalities`` that declared ``device_class``
        (None: none declared; ValueError for a class the federation does not accept)."""
        resolved = device_classes.resolve(self.cfg.fleet, device_class)
        refused = device_classes.refusal(self.cfg.fleet, self.cfg.federation, resolved)
        if refused:
            raise ValueError(refused)
        spec = self.algorithm.class_spec(
            self.algorithm.upload_spec(self.party, tuple(modalities), len(plan.proxy_windows)),
            device_classes.hidden_for(self.cfg.hidden, resolved))
        return {k: (shape, "float32") for k, shape in spec.items()}

    # ---- aggregation --------------------------------------------------------------------------------
    def begin_round(self, plan: RoundPlan) -> None:
        _check_plan(self.cfg, plan, self.proxy)
        if self._reference is None or self._reference[0] != plan.round:
            self.downstream(plan)  # the upload scale of this round comes from the server's own knowledge
        self._mean, self._absorbed, self._plan = robust.make_mean(self.cfg.robust_aggregation), set(), plan

    def absorb(self, client_id: str, modalities: tuple[str, ...], upload: Tensors, device_class: str | None = None
               ) -> None:
        """Validate one client's upload (shapes for its declared ``device_class``, magnitudes) and fold it into the
        round's mean.

        The streaming mean (``robust_aggregation = "none"``) is O(1) in #clients; "clip" and "trimmed" hold
        every upload of the round (fedmekt/learn/robust.py).
        """
        if self._mean is None:
            raise RuntimeError("absorb() before begin_round()")
        if client_id not in self._plan.selected:
            raise ValueError(f"{client_id} was not selected in round {self._plan.round}")
        if client_id in self._absorbed:
            raise ValueError(f"{client_id} already uploaded in round {self._plan.round}")
        if not modalities or any(m not in self.cfg.pair for m in modalities):
            raise ValueError(f"{client_id}: modalities {modalities} not in {self.cfg.pair}")
        spec = {k: s for k, (s, _) in self.expected_upload(tuple(modalities), self._plan, device_class).items()}
        check_tensors(upload, spec, f"upload from {client_id}")
        reference = self._reference[1]
        robust.check_magnitude(upload, reference, f"upload from {client_id}")
        upload = self.algorithm.teacher_view(self.party, upload, self._knowledge)  # after the magnitude check
        weight = self.algorithm.client_weight(self.cfg, tuple(modalities))
        if self.cfg.hyper.upload_weight == "rounds":
            weight *= self._absorbed_rounds.get(client_id, 0) + 1
        for k in sorted(upload):
            self._mean.add(k, upload[k], weight)
        self._absorbed.add(client_id)

    def finish_round(self, plan: RoundPlan) -> dict:
        """Server update from the uploads, classifier epochs, evaluation; returns the round's metrics row."""
        if self._mean is None:
            raise RuntimeError("finish_round() before begin_round()")
        row: dict = {"round": plan.round, "selected": len(plan.selected), "absorbed": len(self._absorbed),
                     "participants": sorted(self._absorbed)}  # per-client participation in the report
        means = self.algorithm.aggregate(self.party, self._mean)
        for client_id in self._absorbed:
            self._absorbed_rounds[client_id] = self._absorbed_rounds.get(client_id, 0) + 1
        if self._absorbed:
            row.update(self._server_update(plan, means))
        row["loss_classifier"] = train_classifier_round(
            self.model, self.head, self.head_optim, self.labelled, self.cfg,
            rng_for(self.cfg.seed, _CLASSIFIER, plan.round), self.device)
        if self.test is not None:
            for m in self.cfg.pair:
                for k, v in paper_probe(self.model, self.head, self.test, m, len(self.label_names),
                                        self.cfg.eval_chunk, self.device).items():
                    row[f"{k}_{m}"] = v
        self.rounds_completed = plan.round + 1
        self._mean = None
        return row

    def _server_update(self, plan: RoundPlan, means: Tensors) -> dict[str, float]:
        return self.algorithm.server_update(self.party, means, self._proxy(plan),
                                            rng_for(self.cfg.seed, _SERVER, plan.round), plan.round)

    def update_without_uploads(self, plan: RoundPlan) -> dict[str, float]:
        """The round's server steps with no knowledge from clients (FedMEKT: reconstruction of the proxy set
        and its walk, the same draws and steps as a round that absorbed uploads): the ``proxy-only`` row."""
        _check_plan(self.cfg, plan, self.proxy)
        return self._server_update(plan, {})

    def probe(self) -> dict:
        """The tables' linear probe trained to convergence on the frozen final encoders, plus the majority floor."""
        if self.test is None:
            raise ValueError("the final evaluation needs a test partition")
        return linear_probe(self.model, self.labelled, self.test, self.cfg, len(self.label_names), self.device,
                            _seed(self.cfg, _PROBE))

    def global_state(self) -> GlobalState:
        """The global model and head as they stand (live: ``.copy()`` for a snapshot another thread may read)."""
        return GlobalState(self.model, self.head, self.rounds_completed)

    def deployed(self) -> DeployedModel:
        """What the packages ship after the rounds completed so far: the federation's encoders and head fine-tuned
        on the labelled set by ``hyper``'s deploy recipe (fedmekt/learn/deployables.py); computed once per round."""
        return self.deployables.deployed(self.global_state())

    def final_evaluation(self) -> dict:
        """The probe, and the deployed model's figures (what the packages ship), with its fine-tuning steps; in a
        fleet of several device classes also each class's deployed figures (``class_<c>_deployed_…``)."""
        probe, dep = self.probe(), self.deployed()
        out = {**probe, **deployed_scores(dep.model, dep.head, self.test, self.cfg, len(self.label_names),
                                          self.device), "deploy_steps": dep.steps}
        if len(self.cfg.device_classes) > 1:
            out.update(self.class_scores())
        return out

    def final_state(self) -> dict[str, np.ndarray]:
        """What a run folder keeps: the global model, the federation's head and the deployed model; in a fleet of
        several device classes also each narrower class's model (``class.<c>.*``: ``fedmekt export --device-class``)."""
        state = {k: v for k, v in self.state_dict().items() if k.startswith(("autoencoder.", "head."))}
        state.update(self.deployed().state())
        if len(self.cfg.device_classes) > 1:
            top = device_classes.global_class(self.cfg.fleet)   # ships the deployed model
            for cm in (cm for name, cm in self.class_models().items() if name != top):
                state.update(cm.state())
        return state

    def class_scores(self) -> dict:
        """Each device class's deployed model scored on the test set (``class_<c>_deployed_…``), its width and
        encoder parameter count."""
        out: dict = {}
        for name, cm in self.class_models().items():
            scores = deployed_scores(cm.model, cm.head, self.test, self.cfg, len(self.label_names), self.device)
            out.update({f"class_{name}_{k}": v for k, v in scores.items()})
            out[f"class_{name}_hidden"] = cm.model.hidden
            out[f"class_{name}_encoder_params"] = cm.encoder_params
        return out

    def class_models(self) -> dict[str, ClassModel]:
        """Each accepted device class's deployable encoders + head after the rounds completed so far
        (:meth:`fedmekt.learn.deployables.Deployables.class_models`: fresh after the last round, warm-started from
        the previous package before it); computed once per completed round."""
        return self.deployables.class_models(self.global_state())

    # ---- checkpoint ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"autoencoder.{k}": to_numpy(v) for k, v in self.model.state_dict().items()}
        state.update({f"head.{k}": to_numpy(v) for k, v in self.head.state_dict().items()})
        state.update(self.party.optim.state_arrays("optim/"))
        state.update({f"head_optim/{k}": v for k, v in optimizer_arrays(self.head_optim).items()})
        state["meta/rounds_completed"] = np.array([self.rounds_completed], dtype=np.int64)
        state.update({f"{_ABSORBED}{c}": np.array([n], dtype=np.int64) for c, n in self._absorbed_rounds.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith(prefix)}

        self.deployables.reset()   # derived from the model: recomputed on demand
        self.model.load_state_dict(sub("autoencoder."))
        self.head.load_state_dict(sub("head."))
        self.party.optim.load_state_arrays(state, "optim/")
        load_optimizer_arrays(self.head_optim, {k[len("head_optim/"):]: v for k, v in state.items()
                                                if k.startswith("head_optim/")})
        self.rounds_completed = int(np.asarray(state["meta/rounds_completed"]).reshape(-1)[0])
        self._absorbed_rounds = {k[len(_ABSORBED):]: int(np.asarray(v).reshape(-1)[0])
                                 for k, v in state.items() if k.startswith(_ABSORBED)}

    def run_info(self) -> RunInfo:
        norm_mean = {m: [float(v) for v in self.normalizer.mean[m]] for m in self.cfg.pair} if self.normalizer else {}
        norm_std = {m: [float(v) for v in self.normalizer.std[m]] for m in self.cfg.pair} if self.normalizer else {}
        return RunInfo(
            federation=self.cfg.federation, algorithm=self.cfg.algorithm, dataset=self.cfg.dataset,
            pair=tuple(self.cfg.pair), channels=dict(self.channels), rep_size=self.model.rep_size,
            hidden=self.model.hidden, label_names=self.label_names, window=self.cfg.window, rate_hz=self.rate_hz,
            rounds_completed=self.rounds_completed, norm_mean=norm_mean, norm_std=norm_std,
            extra={"config": self.cfg.to_dict()},
        )


class ClientEngine:
    """Client side: a persistent local model (never overwritten in FedMEKT) and its optimizers."""

    def __init__(self, cfg: FederationConfig, client_id: str, modalities: tuple[str, ...], channels: dict[str, int],
                 proxy: Partition | None, device_class: str | None = None) -> None:
        torch.set_num_threads(cfg.threads)
        if not modalities or any(m not in cfg.pair for m in modalities):
            raise ValueError(f"client {client_id}: modalities {modalities} not in {cfg.pair}")
        self.device_class = device_classes.resolve(cfg.fleet, device_class)
        refused = device_classes.refusal(cfg.fleet, cfg.federation, self.device_class)
        if refused:
            raise ValueError(f"client {client_id}: {refused}")
        self.cfg, self.client_id = cfg, client_id
        self.modalities = tuple(m for m in cfg.pair if m in modalities)
        self.channels = {m: int(channels[m]) for m in cfg.pair}
        self.proxy = proxy
        self.device = resolve_device(cfg.client_device)
        self.algorithm = get_algorithm(cfg.algorithm)
        self.model = build_model(cfg, {m: int(channels[m]) for m in cfg.pair}, self.device_class).to(self.device)
        self.party = Party(cfg, self.model, ModuleOptimizers(self.model, cfg.hyper.lr_local),
                           Projections(self.model.rep_size, self.model.hidden, _seed(cfg, _PROJ)).to(self.device),
                           self.device, self.modalities)

    def train_round(self, plan: RoundPlan, downstream: Tensors, private: Partition) -> Tensors:
        """Local training on ``private`` guided by ``downstream``; returns the upload (float32 arrays).

        FedMEKT's proxy windows Π_t come from the proxy set this client holds, or, when it holds none
        (``proxy_delivery`` "round"), from the raw windows that travel in ``downstream``.
        """
        _check_plan(self.cfg, plan, self.proxy)
        proxy = None
        if self.cfg.is_embedding and self.proxy is not None:
            proxy = ProxyWindows.cut(self.proxy, plan.proxy_windows, plan.window, self.modalities, self.device)
        elif self.cfg.is_embedding:
            shapes = {window_key(m): (len(plan.proxy_windows), plan.window, self.channels[m]) for m in self.modalities}
            check_tensors({k: downstream[k] for k in shapes if k in downstream}, shapes, "downstream proxy windows")
            proxy = ProxyWindows({m: downstream[window_key(m)] for m in self.modalities}, plan.proxy_windows,
                                 self.device)
        downstream = {k: v for k, v in downstream.items() if not k.startswith("proxy/")}
        rng = rng_for(self.cfg.seed, _CLIENT, client_key(self.client_id), plan.round)
        upload = self.algorithm.client_train(self.party, downstream, private, proxy, rng)
        return self._add_noise(upload, plan.round)

    def _add_noise(self, upload: Tensors, round_: int) -> Tensors:
        """Privacy option: N(0, σ²) on every uploaded embedding value (σ = ``cfg.embedding_noise``).

        Only FedMEKT uploads embeddings; the parameter-exchange baselines ignore the option. The noise is
        drawn in sorted key order from its own seeded generator, so every process adds the same noise.
        """
        sigma = float(self.cfg.embedding_noise)
        if sigma <= 0 or not self.cfg.is_embedding:
            return upload
        rng = rng_for(self.cfg.seed, _NOISE, client_key(self.client_id), round_)
        return {k: (upload[k] + rng.normal(0.0, sigma, upload[k].shape)).astype(np.float32) for k in sorted(upload)}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"autoencoder.{k}": to_numpy(v) for k, v in self.model.state_dict().items()}
        state.update(self.party.optim.state_arrays("optim/"))
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.model.load_state_dict({k[len("autoencoder."):]: torch.from_numpy(np.array(v))
                                    for k, v in state.items() if k.startswith("autoencoder.")})
        self.party.optim.load_state_arrays(state, "optim/")
