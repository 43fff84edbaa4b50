"""Helpers for the export / inference tests: small global models built on the real recordings.

A "run" here is what the core engine leaves behind (run.json + final_model.safetensors),
written through export.run_model.save_run_model from a seeded SplitAutoencoder + LinearHead,
optionally trained a few hundred supervised steps on real windows so that labels and F1
mean something. Held-out recordings (every 4th unit) are the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.run_model import RunModel, load_run_model, one_torch_thread, save_run_model
from fedmekt.run_info import RunInfo
from fedmekt.learn.model import EncoderClassifier, LinearHead, SplitAutoencoder
from sensors.datasets import dataset_info, load_dataset
from sensors.recording import Recording

WINDOW = 32
REPO = Path(__file__).resolve().parents[1]


@dataclass
class DatasetRun:
    """A run folder plus the normalised train/test recordings it was fitted on."""

    dataset: str
    run_dir: Path
    model: RunModel
    train: list[Recording]
    test: list[Recording]

    def normalised(self, rec: Recording, modality: str) -> np.ndarray:
        return ((rec.modalities[modality] - np.asarray(self.model.info.norm_mean[modality], np.float32))
                / np.asarray(self.model.info.norm_std[modality], np.float32)).astype(np.float32)

    def test_windows(self, modality: str, stride: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
        """Normalised test windows [n, W, C] and the label of their last row (labelled rows only)."""
        xs, ys = [], []
        for rec in self.test:
            x = self.normalised(rec, modality)
            if len(x) < WINDOW:
                continue
            starts = np.arange(0, len(x) - WINDOW + 1, stride)
            xs.append(np.stack([x[s:s + WINDOW] for s in starts]))
            ys.append(rec.labels[starts + WINDOW - 1])
        x, y = np.concatenate(xs), np.concatenate(ys)
        keep = y >= 0
        return x[keep], y[keep]


def _train(model: SplitAutoencoder, head: LinearHead, train: list[Recording], norm: dict, steps: int,
           seed: int) -> None:
    """Supervised per-step cross-entropy on random labelled windows of both modalities (a quick stand-in
    for federated training: enough for labels and F1 to carry signal)."""
    rng = np.random.default_rng(seed)
    recs = [r for r in train if len(r) > WINDOW]
    params = list(model.encoders.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    for _ in range(steps):
        batch = [recs[i] for i in rng.integers(0, len(recs), 32)]
        starts = [int(rng.integers(0, len(r) - WINDOW)) for r in batch]
        y = torch.from_numpy(np.stack([r.labels[s:s + WINDOW] for r, s in zip(batch, starts)]))
        loss = 0.0
        for m in model.modalities:
            x = np.stack([(r.modalities[m][s:s + WINDOW] - norm[m][0]) / norm[m][1] for r, s in zip(batch, starts)])
            _, logits = EncoderClassifier(model.encoders[m], head)(torch.from_numpy(x.astype(np.float32)))
            loss = loss + loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def make_dataset_run(dataset: str, data_dir: Path, run_dir: Path, *, train_steps: int = 0, seed: int = 0,
                     rounds: int = 3) -> DatasetRun:
    """Build, optionally train, and save a run for ``dataset``'s default modality pair."""
    info = dataset_info(dataset)
    recs = sorted(load_dataset(dataset, data_dir), key=lambda r: r.unit)
    test, train = recs[::4], [r for i, r in enumerate(recs) if i % 4]
    pair = info.default_pair
    channels = {m: int(train[0].modalities[m].shape[1]) for m in pair}
    norm = {}
    for m in pair:
        rows = np.concatenate([r.modalities[m] for r in train])
        norm[m] = (rows.mean(0).astype(np.float32), np.maximum(rows.std(0), 1e-6).astype(np.float32))
    rep = info.paper_rep_size(pair)
    with one_torch_thread():  # also makes the model independent of the process's thread count (orthogonal init)
        torch.manual_seed(seed)
        model, head = SplitAutoencoder(channels, rep), LinearHead(rep, len(info.label_names))
        if train_steps:
            _train(model, head, train, norm, train_steps, seed)
    run_info = RunInfo(
        federation=f"test-{dataset}", algorithm="fedmekt-c", dataset=dataset, pair=pair, channels=channels,
        rep_size=rep, hidden=model.hidden, label_names=tuple(info.label_names), window=WINDOW,
        rate_hz=float(info.rate_hz), rounds_completed=rounds,
        norm_mean={m: norm[m][0].tolist() for m in pair}, norm_std={m: norm[m][1].tolist() for m in pair},
    )
    save_run_model(run_dir, run_info, model.eval(), head.eval())
    return DatasetRun(dataset, Path(run_dir), load_run_model(run_dir), train, test)


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's f1_score(average="weighted") over the classes present in y_true."""
    classes, support = np.unique(y_true, return_counts=True)
    f1 = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.average(f1, weights=support))


TRAIN_STEPS = {"hapt": 600, "ur_fall": 300}
_RUNS: dict[str, DatasetRun] = {}


def trained_run(dataset: str, data_dir: Path, tmp_path_factory) -> DatasetRun:
    """One briefly trained run per dataset and test session (built on first use, then shared)."""
    if dataset not in _RUNS:
        _RUNS[dataset] = make_dataset_run(dataset, data_dir, tmp_path_factory.mktemp(f"run-{dataset}"),
                                          train_steps=TRAIN_STEPS[dataset])
    return _RUNS[dataset]


def signing_keys(tmp_path_factory) -> tuple[Path, Path]:
    """An Ed25519 key pair (private, public) for the session."""
    if "keys" not in _RUNS:
        from export.package import generate_keypair

        root = tmp_path_factory.mktemp("keys")
        generate_keypair(root / "agg.key", root / "agg.pub")
        _RUNS["keys"] = (root / "agg.key", root / "agg.pub")
    return _RUNS["keys"]


def built_package(dataset: str, data_dir: Path, tmp_path_factory, *, int8: bool = False) -> Path:
    """A signed package of ``dataset``'s trained run (built once per session; copy it before changing it)."""
    name = f"pkg-{dataset}-{'int8' if int8 else 'fp32'}"
    if name not in _RUNS:
        from export.build import build_package
        from export.package import load_private_key

        run = trained_run(dataset, data_dir, tmp_path_factory)
        key, _ = signing_keys(tmp_path_factory)
        _RUNS[name] = build_package(run.model, tmp_path_factory.mktemp(name) / "package", load_private_key(key),
                                    int8=int8).path
    return _RUNS[name]


def bound_copy(src: Path, dst: Path, key, run: str, round_: int, federation: str = "test-hapt",
               device_class: str = "") -> Path:
    """A copy of package ``src`` re-signed for (federation, run, round) and, when given, a device class, as the
    aggregator binds what it publishes."""
    import shutil

    from export.package import MANIFEST, Manifest, sign_package

    pkg = Path(shutil.copytree(src, dst))
    manifest = Manifest.from_bytes((pkg / MANIFEST).read_bytes())
    extra = {**manifest.extra, **({"device_class": device_class} if device_class else {})}
    sign_package(pkg, Manifest(**{**manifest.__dict__, "round": round_, "run": run, "federation": federation,
                                  "extra": extra}), key)
    return pkg
