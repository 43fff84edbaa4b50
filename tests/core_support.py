"""Tiny synthetic federation for the core tests: a real sensors split of 8 fake subjects, a small model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fedmekt.config import FederationConfig, Hyper
from sensors.recording import Recording
from sensors.splits import make_split

LABELS = ("rest", "walk", "fall")


# the server's final steps kept short in test configs, as tiny_config's hyper does: the deployed model's
# fine-tuning (the default recipe's 50 rounds cost ~22 s per package on the demo data, minutes on a loaded
# machine), the classifier's epochs and the final probe's L-BFGS iterations (500 took ~5 s of a 5-round demo
# federation's 15 CPU-s, paid again by every in-process reference run)
QUICK_HYPER_TOML = "[hyper]\ndeploy_rounds = 2\nclassifier_epochs = 1\nprobe_max_iter = 20\n"


def quick_hyper_config(folder: Path) -> Path:
    """A TOML base config that only shortens the server's final steps (for ``simulate --config``)."""
    path = folder / "quick-hyper.toml"
    path.write_text(QUICK_HYPER_TOML)
    return path


def synthetic_recordings(n_subjects: int = 8, rows: int = 240, seed: int = 0) -> list[Recording]:
    """Two modalities whose signal depends on a 3-class activity (so a probe can learn), some rows unlabelled."""
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(n_subjects):
        y = np.repeat(rng.integers(0, 3, size=rows // 20), 20).astype(np.int64)
        t = np.arange(rows) / 20.0
        a = np.stack([np.sin(t * (1 + y)), y - 1.0, rng.normal(0, 0.3, rows)], 1)
        b = np.stack([np.cos(t * (1 + y)), 0.5 * y], 1) + rng.normal(0, 0.2, (rows, 2))
        labels = y.copy()
        labels[rng.random(rows) < 0.1] = -1
        recs.append(Recording("synthetic", f"s{s}-run", f"s{s}", 20.0,
                              {"a": a.astype(np.float32), "b": b.astype(np.float32)}, labels,
                              np.arange(rows, dtype=np.float64) / 20.0, LABELS))
    return recs


def tiny_split(seed: int = 0, clients=(2, 2, 2)):
    return make_split(synthetic_recordings(), ("a", "b"), seed=seed, clients=clients, n_div=5)


def tiny_config(algorithm: str = "fedmekt-c", hyper: Hyper | dict | None = None, **kw) -> FederationConfig:
    """A config small enough for a test; ``hyper`` a :class:`Hyper` replaces the tiny one, a dict overrides some of
    its fields (the rest stay tiny: a dict used to replace it, silently bringing back every default)."""
    tiny = Hyper(batch=(4, 6), sub_window=(4, 8), classifier_epochs=1, local_epochs=1, global_epochs=1,
                 probe_max_iter=20, deploy_rounds=2)   # the deployed model's fine-tuning, kept short
    hyper = replace(tiny, **hyper) if isinstance(hyper, dict) else hyper or tiny
    base = dict(federation="t", dataset="synthetic", pair=("a", "b"), algorithm=algorithm, clients=(2, 2, 2),
                per_round=4, rounds=2, rep_size=2, hidden=8, window=8, proxy_windows=6, proxy_batch=3,
                eval_chunk=100, device="cpu", hyper=hyper,
                proxy_delivery="once")  # the proxy-set path; test_core_proxy_delivery covers "round"
    base.update(kw)
    return FederationConfig(**base)


def assert_deployed_figures_score_the_shipped_model(server, final: dict) -> None:
    """final_evaluation's deployed figures are what the package computes: the deployed encoder + head
    (``EncoderClassifier``, the exported module) run on each ``eval_chunk`` chunk of the probe's test rows as one
    window from a zero state, every step's prediction kept (so each chunk's last step is the recognizer's label)."""
    import torch

    from fedmekt.learn.evaluation import chunk_bounds, f1_scores
    from fedmekt.learn.model import EncoderClassifier

    dep, cfg, test = server.deployed(), server.cfg, server.test
    bounds = chunk_bounds(test.segments, cfg.eval_chunk)
    y = test.labels[np.concatenate([np.arange(a, b) for a, b in bounds])]
    for m in cfg.pair:
        package = EncoderClassifier(dep.model.encoders[m], dep.head)
        with torch.no_grad():
            pred = torch.cat([package(torch.from_numpy(test.modalities[m][a:b][None]).float())[1][0]
                              for a, b in bounds]).argmax(1)
        assert final[f"deployed_f1_weighted_{m}"] == f1_scores(y, pred.numpy(), len(server.label_names))["f1_weighted"]
