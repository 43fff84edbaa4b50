"""Generalized classifier training and evaluation (spec §4.9, §5, and the clean protocol of §11.5).

Two probes of the global encoder:

* the paper's moving probe: the head persists across rounds and gets ``classifier_epochs`` short epochs per
  round; each round the test set of a modality is treated as ONE sequence cut into ``eval_chunk``-step
  chunks (each from a zero LSTM state), weighted F1 is computed per chunk and averaged over chunks
  (``f1_paper``); the table value is the median of the last 10 rounds;
* the deployed model (``deployed_scores``): what ships in the package (``fedmekt.learn.deploy``: the encoders
  and head fine-tuned on the labelled set), scored like the probe — what a user's gateway predicts, beside the
  research metric; the head runs on each chunk as one sequence (``classify_rows``), as the package runs on a
  window, so a head pooling z over time pools as it does on a gateway's window;
* the final linear probe (``modality_probes``, the one probe of every table row): per test modality, a fresh
  linear head trained to convergence (full-batch L-BFGS) on that modality's frozen per-step features of the
  labelled partition; weighted F1, macro F1 and accuracy over the whole test set (every segment encoded from
  a zero state in ``eval_chunk`` chunks), with the majority-class floor (the labelled set's most frequent
  class predicted everywhere — no peeking at test labels); ``raw_probe`` is the same probe on the unencoded
  per-step features (the reference row an encoder must beat).

Rows labelled -1 are ignored everywhere. F1 is numpy (no sklearn), matching sklearn's definitions.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmekt.learn.algorithms.base import epoch_steps, private_epoch, to_numpy
from fedmekt.concurrency import seeded_torch
from fedmekt.config import FederationConfig
from fedmekt.learn.losses import classifier_loss
from fedmekt.learn.model import LinearHead, SplitAutoencoder
from sensors.partition import Partition


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[true, predicted] over rows with y_true >= 0."""
    keep = y_true >= 0
    t, p = y_true[keep].astype(np.int64), y_pred[keep].astype(np.int64)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Weighted F1, macro F1 and accuracy over rows with y_true >= 0 (sklearn semantics: classes = labels seen)."""
    keep = y_true >= 0
    t = y_true[keep]
    if t.size == 0:
        return {"f1_weighted": float("nan"), "f1_macro": float("nan"), "accuracy": float("nan")}
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1).astype(np.float64), cm.sum(0).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support + predicted) > 0
    return {
        "f1_weighted": float((f1 * support).sum() / support.sum()),
        "f1_macro": float(f1[present].mean()),
        "accuracy": float(tp.sum() / t.size),
    }


def chunk_bounds(segments: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most ``chunk`` rows, never crossing a segment."""
    return [(s, min(s + chunk, b)) for a, b in np.asarray(segments) for s in range(int(a), int(b), chunk)]


def encode_rows(model: SplitAutoencoder, x: np.ndarray, modality: str, bounds: list[tuple[int, int]],
                device: torch.device) -> torch.Tensor:
    """z [rows, r] for the rows covered by ``bounds``, each range encoded from a zero state, in one batch.

    Ranges are right-padded to the longest: an LSTM's output at step t never depends on later steps.
    """
    with torch.no_grad():
        z, _ = model.encode(_padded(x, bounds, device), modality)
    return _rows(z, bounds)


def classify_rows(model: SplitAutoencoder, head: torch.nn.Module, x: np.ndarray, modality: str,
                  bounds: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Logits [rows, K] of ``head`` over each range's z sequence (``encode_rows``' batching).

    The head sees a range as one sequence, as it does a training crop and the package a window: a head that
    pools z causally (``PooledMLPHead``) restarts with every range and, like the LSTM, never sees a later step,
    so the padding changes nothing.
    """
    with torch.no_grad():
        z, _ = model.encode(_padded(x, bounds, device), modality)
        return _rows(head(z), bounds)


def _padded(x: np.ndarray, bounds: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """The ranges of ``x`` as one batch [len(bounds), longest, C], right-padded with zeros."""
    longest = max(b - a for a, b in bounds)
    batch = np.zeros((len(bounds), longest, x.shape[1]), dtype=np.float32)
    for i, (a, b) in enumerate(bounds):
        batch[i, : b - a] = x[a:b]
    return torch.from_numpy(batch).to(device)


def _rows(seq: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """The unpadded steps of a padded batch [len(bounds), longest, D], concatenated [rows, D]."""
    return torch.cat([seq[i, : b - a] for i, (a, b) in enumerate(bounds)])


def train_classifier_round(model: SplitAutoencoder, head: torch.nn.Module, opt: torch.optim.Optimizer,
                           labelled: Partition, cfg: FederationConfig, rng: np.random.Generator,
                           device: torch.device, tune_encoder: bool = False) -> float:
    """One round of generalized classifier learning: ``classifier_epochs`` × each label modality (spec §4.9),
    each walk bounded by its share of ``hyper.classifier_step_budget``.

    The encoder is frozen, as in the federation; ``tune_encoder`` lets the loss train it too (``opt`` then
    holds its parameters): the supervised reference rows (``fedmekt.experiment.reference_rows``).
    """
    losses = []
    steps = epoch_steps(cfg.hyper.classifier_step_budget, cfg.hyper.classifier_epochs)
    for _ in range(cfg.hyper.classifier_epochs):
        for m in cfg.label_modalities:
            for xs, ys in private_epoch(labelled, (m,), cfg, rng, device, steps):
                if not bool((ys >= 0).any()):
                    continue
                with torch.set_grad_enabled(tune_encoder):
                    z, _ = model.encode(xs[m], m)
                loss = classifier_loss(head(z), ys)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def paper_probe(model: SplitAutoencoder, head: LinearHead, test: Partition, modality: str, n_classes: int,
                chunk: int, device: torch.device) -> dict[str, float]:
    """The per-round metric of the reference (``sC:636-683``) plus whole-test figures of the same predictions."""
    bounds = _paper_chunks(len(test), chunk)
    with torch.no_grad():
        pred = to_numpy(head(encode_rows(model, test.modalities[modality], modality, bounds, device))).argmax(1)
    return {"f1_paper": paper_metric(test.labels, pred, n_classes, chunk), **f1_scores(test.labels, pred, n_classes)}


def _paper_chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]  # whole test set as ONE sequence (as the paper)


def paper_metric(labels: np.ndarray, pred: np.ndarray, n_classes: int, chunk: int) -> float:
    """The paper's per-round figure of predictions ``pred`` over the test rows: weighted F1 per ``chunk``-row
    chunk of the test set taken as one sequence, averaged over the chunks that hold a label."""
    per_chunk = [f1_scores(labels[a:b], pred[a:b], n_classes)["f1_weighted"] for a, b in _paper_chunks(len(labels), chunk)]
    return float(np.mean([f for f in per_chunk if not np.isnan(f)]))


def linear_probe(model: SplitAutoencoder, labelled: Partition, test: Partition, cfg: FederationConfig,
                 n_classes: int, device: torch.device, seed: int,
                 modalities: tuple[str, ...] | None = None) -> dict[str, float]:
    """The final probe (``modality_probes``) on the frozen encoder's per-step z of each of ``modalities``.

    ``modalities`` defaults to the pair; a unimodal client's own encoder is probed on what it holds.
    """
    return modality_probes(lambda m, part, bounds: encode_rows(model, part.modalities[m], m, bounds, device),
                           lambda m: model.rep_size, labelled, test, modalities or cfg.pair, cfg, n_classes,
                           device, seed)


def deployed_scores(model: SplitAutoencoder, head: torch.nn.Module, test: Partition, cfg: FederationConfig,
                    n_classes: int, device: torch.device) -> dict[str, float]:
    """What a gateway's package predicts: the shipped head on each modality's encoder, scored like the probe
    (``deployed_{f1_weighted,f1_macro,accuracy}_<m>`` over the whole test set, segments from a zero state)."""
    bounds = chunk_bounds(test.segments, cfg.eval_chunk)
    y = test.labels[np.concatenate([np.arange(a, b) for a, b in bounds])]
    out: dict[str, float] = {}
    for m in cfg.pair:
        pred = to_numpy(classify_rows(model, head, test.modalities[m], m, bounds, device)).argmax(1)
        out.update({f"deployed_{k}_{m}": v for k, v in f1_scores(y, pred, n_classes).items()})
    return out


def raw_probe(labelled: Partition, test: Partition, cfg: FederationConfig, n_classes: int, device: torch.device,
              seed: int) -> dict[str, float]:
    """The same probe on the unencoded per-step features: what an encoder must beat."""
    return modality_probes(lambda m, part, bounds: raw_rows(part.modalities[m], bounds, device),
                           lambda m: labelled.modalities[m].shape[1], labelled, test, cfg.pair, cfg, n_classes,
                           device, seed)


def modality_probes(features, dim, labelled: Partition, test: Partition, modalities: tuple[str, ...],
                    cfg: FederationConfig, n_classes: int, device: torch.device, seed: int) -> dict[str, float]:
    """THE probe of every row of a table: per test modality m, a fresh linear head (``fit_probe``) fitted on
    m's features of the labelled set and scored on m's features of the test set.

    One definition for encoders, raw features and each local-only client alike, so rows differ only in the
    features they offer (``features(m, partition, bounds) -> [rows, dim(m)]``), never in how they are probed.
    """
    out: dict[str, float] = {}
    for m in modalities:
        probe = fit_probe(features, dim(m), labelled, test, (m,), (m,), cfg, n_classes, device, seed)
        out.update({k: v for k, v in probe.items() if k != "probe_train_loss"})
        out[f"probe_train_loss_{m}"] = probe["probe_train_loss"]
    return out


def raw_rows(x: np.ndarray, bounds: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """The rows covered by ``bounds`` as a float32 tensor [rows, C] (``encode_rows`` without the encoder)."""
    return torch.from_numpy(np.concatenate([x[a:b] for a, b in bounds]).astype(np.float32, copy=False)).to(device)


def fit_probe(features, dim: int, labelled: Partition, test: Partition, train_modalities: tuple[str, ...],
              test_modalities: tuple[str, ...], cfg: FederationConfig, n_classes: int, device: torch.device,
              seed: int) -> dict[str, float]:
    """Full-batch L-BFGS linear head on ``features(m, partition, bounds) -> [rows, dim]``; one probe for every row.

    Scores ``probe_{f1_weighted,f1_macro,accuracy}_<m>`` per test modality, the majority floor of the
    labelled set and the head's final training loss.
    """
    bounds_lab = chunk_bounds(labelled.segments, cfg.eval_chunk)
    rows_lab = np.concatenate([np.arange(a, b) for a, b in bounds_lab])
    feats, labels = [], []
    for m in train_modalities:
        feats.append(features(m, labelled, bounds_lab))
        labels.append(torch.from_numpy(labelled.labels[rows_lab]).to(device))
    x, y = torch.cat(feats), torch.cat(labels)
    keep = y >= 0
    x, y = x[keep], y[keep]
    with seeded_torch(seed):
        head = LinearHead(dim, n_classes).to(device)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=cfg.hyper.probe_max_iter,
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    out: dict[str, float] = {"probe_train_loss": float(closure().detach())}
    majority = int(np.bincount(to_numpy(y.float()).astype(np.int64), minlength=n_classes).argmax())
    bounds_test = chunk_bounds(test.segments, cfg.eval_chunk)
    rows_test = np.concatenate([np.arange(a, b) for a, b in bounds_test])
    y_test = test.labels[rows_test]
    for m in test_modalities:
        with torch.no_grad():
            pred = to_numpy(head(features(m, test, bounds_test))).argmax(1)
        for k, v in f1_scores(y_test, pred, n_classes).items():
            out[f"probe_{k}_{m}"] = v
        out[f"confusion_{m}"] = confusion_matrix(y_test, pred, n_classes).tolist()  # rendered by the HTML report
    for k, v in f1_scores(y_test, np.full_like(y_test, majority), n_classes).items():
        out[f"majority_{k}"] = v
    out["majority_class"] = majority
    # the same constant predictor on the per-round curve's own metric: chunk averages score it higher
    out["majority_f1_paper"] = paper_metric(test.labels, np.full_like(test.labels, majority), n_classes, cfg.eval_chunk)
    return out
