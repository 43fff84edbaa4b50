"""Probes: chunking never crosses segments, batched padded encoding equals one-by-one, probe reports the floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmekt.learn.engine import ServerEngine
from fedmekt.learn.evaluation import chunk_bounds, classify_rows, encode_rows
from fedmekt.learn.model import EncoderClassifier, SplitAutoencoder, build_head
from tests.core_support import assert_deployed_figures_score_the_shipped_model, tiny_config, tiny_split


def test_chunk_bounds_cover_every_row_once_within_segments():
    segments = np.array([[0, 5], [5, 17], [17, 18]])
    bounds = chunk_bounds(segments, 4)
    assert bounds == [(0, 4), (4, 5), (5, 9), (9, 13), (13, 17), (17, 18)]


def test_padded_batch_encoding_equals_encoding_each_range_alone():
    torch.manual_seed(0)
    model = SplitAutoencoder({"a": 3}, 2, hidden=8)
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    bounds = [(0, 12), (12, 15), (15, 30)]
    batched = encode_rows(model, x, "a", bounds, torch.device("cpu"))
    alone = torch.cat([model.encode(torch.from_numpy(x[a:b])[None], "a")[0][0] for a, b in bounds])
    assert batched.shape == (30, 2)
    torch.testing.assert_close(batched, alone.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["linear", "mlp", "mlp-pool"])
def test_evaluation_logits_are_the_package_run_on_each_range_as_one_window(head):
    """classify_rows (the deployed figures' predictions) gives, at every step of a range, the logits of the
    exported module run on that range alone from a zero state: at a range's last step the streaming recognizer's
    label. A head pooling z over its sequence pools each range from its own start, never across ranges."""
    torch.manual_seed(0)
    model = SplitAutoencoder({"a": 3}, 2, hidden=8)
    clf = build_head(head, 2, 4)
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    bounds = [(0, 12), (12, 15), (15, 30)]
    batched = classify_rows(model, clf, x, "a", bounds, torch.device("cpu"))
    with torch.no_grad():
        alone = torch.cat([EncoderClassifier(model.encoders["a"], clf)(torch.from_numpy(x[a:b])[None])[1][0]
                           for a, b in bounds])
    assert batched.shape == (30, 4)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    across = clf(encode_rows(model, x, "a", bounds, torch.device("cpu"))[None])[0]   # all rows as one sequence
    assert torch.allclose(across[12:], alone[12:]) == (head != "mlp-pool")


def test_final_evaluation_reports_probe_metrics_and_majority_floor():
    split = tiny_split()
    cfg = tiny_config("mmfedavg")
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    final = server.final_evaluation()
    for m in cfg.pair:
        for k in ("f1_weighted", "f1_macro", "accuracy"):
            assert 0.0 <= final[f"probe_{k}_{m}"] <= 1.0
    labelled = split.labelled.labels[split.labelled.labels >= 0]
    assert final["majority_class"] == int(np.bincount(labelled).argmax())
    test = split.test.labels[split.test.labels >= 0]
    assert final["majority_accuracy"] == pytest.approx(float(np.mean(test == final["majority_class"])))
    # the probe is fitted: its training loss is below that of the uniform prediction, log K
    for m in cfg.pair:
        assert final[f"probe_train_loss_{m}"] < np.log(len(split.label_names))
    # the floor on the per-round curve's own metric: the same constant, chunk-averaged like the curve
    from fedmekt.learn.evaluation import paper_metric

    constant = np.full_like(split.test.labels, final["majority_class"])
    assert final["majority_f1_paper"] == paper_metric(split.test.labels, constant, len(split.label_names),
                                                      cfg.eval_chunk)
    assert 0 <= final["majority_f1_paper"] <= 1


def test_deployed_figures_are_the_shipped_head_on_each_encoder():
    """final_evaluation scores the model the packages ship (encoders and head), per modality, on the same test rows
    as the probe."""
    split = tiny_split()
    server = ServerEngine(tiny_config("mmfedavg"), split.channels, split.label_names, split.proxy, split.labelled,
                          split.test)
    final = server.final_evaluation()
    assert_deployed_figures_score_the_shipped_model(server, final)
    assert not any(k.startswith("deployed_") for k in server.probe())
