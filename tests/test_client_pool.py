"""Clients trained in worker processes give the same run as in this process, and a worker's failure is named."""

from __future__ import annotations

import numpy as np
import pytest

from fedmekt.experiment.client_pool import WorkerClients
from fedmekt.config import FederationConfig, Hyper
from fedmekt.learn.engine import RoundPlan
from fedmekt.experiment.in_process import run_inprocess
from sensors.datasets import load_dataset
from sensors.splits import make_split


@pytest.fixture(scope="module")
def demo_split():
    return make_split(load_dataset("demo"), ("acce", "gyro"), seed=0, clients=(1, 1, 2))


@pytest.mark.parametrize("algorithm", ["fedmekt-c", "mmfedavg"])
def test_worker_processes_give_bit_identical_rounds(demo_split, algorithm):
    cfg = FederationConfig(algorithm=algorithm, dataset="demo", clients=(1, 1, 2), per_round=3, rounds=2,
                           proxy_windows=8, device="cpu",
                           hyper=Hyper(classifier_epochs=1, probe_max_iter=20, deploy_rounds=2))
    here = run_inprocess(cfg, demo_split, progress=False)
    spread = run_inprocess(cfg, demo_split, progress=False, client_workers=2)
    for a, b in zip(here.rows, spread.rows, strict=True):
        assert {k: v for k, v in a.items() if k != "wall_s"} == {k: v for k, v in b.items() if k != "wall_s"}
    assert all(np.array_equal(here.model_state[k], spread.model_state[k]) for k in here.model_state)


def test_a_failing_worker_is_a_named_error(demo_split):
    cfg = FederationConfig(algorithm="fedmekt-c", dataset="demo", clients=(1, 1, 2), per_round=3, rounds=1,
                           proxy_windows=8, device="cpu")
    pool = WorkerClients(cfg, demo_split.clients, demo_split.channels, demo_split.proxy, workers=2)
    try:
        cid = sorted(c.client_id for c in demo_split.clients)[0]
        plan = RoundPlan(0, (cid,), np.arange(8), cfg.window)
        with pytest.raises(RuntimeError, match="(?s)client worker 0 failed.*downstream"):
            pool.train(plan, {cid: {}})   # no global knowledge: the client's own check refuses it
    finally:
        pool.close()
