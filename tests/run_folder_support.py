"""A real, tiny run folder (two seeds of FedMEKT-C on the bundled demo data, in-process) for report/runs tests."""

from __future__ import annotations

from pathlib import Path

from fedmekt.config import FederationConfig
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.observe.report import write_report
from sensors.datasets import load_dataset
from sensors.splits import make_split


def make_run_folder(out: Path, seeds: tuple[int, ...] = (0, 1), rounds: int = 3) -> Path:
    results = []
    for seed in seeds:
        cfg = FederationConfig(dataset="demo", clients=(1, 1, 1), per_round=2, rounds=rounds, seed=seed,
                               proxy_windows=8, device="cpu", hyper={"classifier_epochs": 1, "probe_max_iter": 20, "deploy_rounds": 2})
        split = make_split(load_dataset("demo"), cfg.pair, seed=seed, clients=cfg.clients)
        results.append(run_inprocess(cfg, split, progress=False))
    write_report(out, results)
    return out
