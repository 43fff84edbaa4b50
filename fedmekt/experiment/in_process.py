"""In-process federation: the server and every client in one process, no broker (``fedmekt reproduce``).

It drives exactly the engine calls the MQTT deployment makes, in the same order, and passes every message
through ``wire_cast`` so a float16 wire is simulated bit for bit; bytes are counted from the real encoded
message sizes (``fedmekt.experiment.accounting``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from fedmekt import device_classes
from fedmekt.experiment.accounting import message_bytes, proxy_once_bytes
from fedmekt.run_info import RunInfo
from fedmekt.config import FederationConfig, Hyper
from fedmekt.experiment.client_pool import LocalClients, WorkerClients, client_pool
from fedmekt.learn.algorithms import get_algorithm
from fedmekt.learn.engine import ServerEngine, client_view, resolve_device
from fedmekt.learn.numerics import numeric_environment
from fedmekt.wire.dtypes import wire_cast
from sensors.partition import ClientPartition, FederatedSplit

Tamper = Callable[[str, dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class RunResult:
    """One run (one algorithm, one seed): per-round rows, the final probe, the final model."""

    name: str
    config: FederationConfig
    rows: list[dict]
    final: dict
    model_state: dict[str, np.ndarray] = field(repr=False)   # "autoencoder.*", "head.*" and "deployed.*"
    run_info: RunInfo | None = None


def variant_label(cfg: FederationConfig) -> str:
    """Algorithm name plus every measured option that differs from the defaults, e.g. ``fedmekt-c[rep,float16]``."""
    tags = []
    if cfg.rep_size:
        tags.append(f"r{cfg.rep_size}")
    if cfg.faithful and cfg.is_embedding:
        tags.append("faithful")
    if cfg.is_embedding and cfg.layers != FederationConfig.layers:
        tags.append(cfg.layers)
    if cfg.is_embedding and cfg.proxy_windows != FederationConfig.proxy_windows:
        tags.append(f"W{cfg.proxy_windows}")
    if cfg.is_embedding and not cfg.faithful and cfg.hyper.kd != "kl":
        tags.append(f"kd-{cfg.hyper.kd}")
    if cfg.is_embedding and not cfg.faithful and cfg.server_teacher != Hyper.server_teacher:
        tags.append(f"teacher-{cfg.server_teacher}")
    if cfg.is_embedding and cfg.server_teacher != "mean" and cfg.hyper.heads_weight != Hyper.heads_weight:
        tags.append(f"heads-w{cfg.hyper.heads_weight:g}")
    if cfg.is_embedding and cfg.server_teacher != "mean" and cfg.hyper.heads_from != Hyper.heads_from:
        tags.append(f"heads-from-{cfg.hyper.heads_from}")
    if cfg.hyper.align != Hyper.align and get_algorithm(cfg.algorithm).aligns:
        tags.append(f"align-{cfg.hyper.align}")
    if cfg.is_embedding and cfg.hyper.server_rec_rounds:
        tags.append(f"rec-warmup{cfg.hyper.server_rec_rounds}")
    if cfg.is_embedding and cfg.embedding_noise > 0:
        tags.append(f"noise{cfg.embedding_noise:g}")
    if cfg.wire_format != cfg.default_wire_format:
        tags.append(cfg.wire_format)
    if cfg.fleet != FederationConfig.fleet:
        tags.append(f"fleet-{cfg.fleet.replace(',', '+')}")
    return cfg.algorithm + (f"[{','.join(tags)}]" if tags else "")


def run_name(cfg: FederationConfig) -> str:
    """Folder-safe run name: the variant label without shell glob characters, e.g. ``fedmekt-c_W32-seed0``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", variant_label(cfg)).strip("_") + f"-seed{cfg.seed}"


def run_record(cfg: FederationConfig, name: str) -> dict:
    """What every round row and the final record of a run begin with: its name and setup."""
    return {"run": name, "algorithm": cfg.algorithm, "variant": variant_label(cfg), "seed": cfg.seed,
            "dataset": cfg.dataset, "pair": "-".join(cfg.pair)}


def final_record(cfg: FederationConfig, base: dict, proxy_delivery: str, proxy_bytes: int, evaluation: dict,
                 wall_s: float) -> dict:
    """The run's last record (final.jsonl): its setup, the one-off proxy bytes, the final evaluation and the
    numeric environment it was computed in (``fedmekt.learn.numerics``)."""
    return {**base, "clients": list(cfg.clients), "per_round": cfg.per_round, "rounds": cfg.rounds,
            "wire_dtype": cfg.wire_format, "layers": cfg.layers, "window": cfg.window,
            "proxy_windows": cfg.proxy_windows if cfg.is_embedding else 0, "faithful": cfg.faithful,
            "partition": cfg.partition, "fleet": cfg.fleet, "proxy_delivery": proxy_delivery,
            "bytes_proxy_once": proxy_bytes, "numerics": numeric_environment(resolve_device(cfg.device)),
            **evaluation, "wall_s": round(wall_s, 2)}


def run_inprocess(cfg: FederationConfig, split: FederatedSplit, progress: bool = True, name: str | None = None,
                  rate_hz: float | None = None, client_workers: int = 1, tamper: Tamper | None = None) -> RunResult:
    """Run ``cfg.rounds`` rounds of ``cfg.algorithm`` on ``split``; rows carry F1 and bytes per round.
    ``rate_hz`` (recorded in run.json) defaults to the split's; ``client_workers`` > 1 trains the clients in
    that many processes (same results, :mod:`fedmekt.experiment.client_pool`). ``tamper(client_id, its downstream view,
    its upload)`` replaces uploads before the server sees them: an attacker, for measurements
    (bench/bench_robust_aggregation.py)."""
    name = name or run_name(cfg)
    start = time.perf_counter()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test,
                          normalizer=split.normalizer,
                          rate_hz=split.manifest.get("rate_hz", 0.0) if rate_hz is None else rate_hz)
    private = {c.client_id: c for c in split.clients}
    once = proxy_once_bytes(cfg, split.proxy, len(split.clients))
    held = split.proxy if server.proxy_delivery == "once" else None  # "round": clients get Π_t with the views
    base = run_record(cfg, name)
    pool = client_pool(cfg, split.clients, split.channels, held, client_workers)
    try:
        rows = _rounds(cfg, server, pool, private, base, progress, name, tamper)
    finally:
        pool.close()
    final = final_record(cfg, base, server.proxy_delivery, once, server.final_evaluation(),
                         time.perf_counter() - start)
    return RunResult(name, cfg, rows, final, server.final_state(), server.run_info())


def _rounds(cfg: FederationConfig, server: ServerEngine, pool: LocalClients | WorkerClients,
            private: dict[str, ClientPartition], base: dict, progress: bool,
            name: str, tamper: Tamper | None = None) -> list[dict]:
    """The rounds, in the order the MQTT deployment makes the same engine calls."""
    rows = []
    classes = device_classes.assign(cfg.fleet, list(private))   # as client_pool deals them
    bar = tqdm(range(cfg.rounds), desc=name, disable=not progress, leave=False, unit="round")
    for rnd in bar:
        t0 = time.perf_counter()
        plan = server.plan_round(rnd, sorted(private))
        down = server.downstream(plan)
        server.begin_round(plan)
        views = {cid: client_view(down, private[cid].modalities) for cid in plan.selected}
        bytes_down = sum(message_bytes(view, cfg.wire_format, kind="global") for view in views.values())
        uploads = pool.train(plan, {cid: wire_cast(view, cfg.wire_format) for cid, view in views.items()})
        bytes_up = 0
        for cid, upload in uploads.items():
            if tamper is not None:
                upload = tamper(cid, views[cid], upload)
            bytes_up += message_bytes(upload, cfg.wire_format)
            server.absorb(cid, private[cid].modalities, wire_cast(upload, cfg.wire_format), classes[cid])
        row = {**base, **server.finish_round(plan), "bytes_down": bytes_down, "bytes_up": bytes_up,
               "bytes_global": message_bytes(down, cfg.wire_format, kind="global"),
               "proxy_windows": len(plan.proxy_windows), "wall_s": round(time.perf_counter() - t0, 4)}
        rows.append(row)
        bar.set_postfix({f"f1_{m}": f"{row.get(f'f1_paper_{m}', float('nan')):.3f}" for m in cfg.pair})
    return rows
