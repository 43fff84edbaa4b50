"""Shapes and gradients of every loss term, the numpy F1, and the streaming mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmekt.learn.evaluation import f1_scores
from fedmekt.learn.losses import (
    classifier_loss, embedding_mse, kd_loss, moon_loss, prox_term, reconstruction_loss, reversed_mse,
)
from fedmekt.learn.streaming import StreamingMean


def _t(*shape, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(grad)


@pytest.mark.parametrize("faithful", [False, True])
def test_kd_loss_is_scalar_with_gradient_only_into_the_student(faithful):
    student, teacher = _t(5, 7, 3, grad=True), _t(5, 7, 3, seed=1)
    loss = kd_loss(student, teacher, 3.0, faithful=faithful)
    assert loss.shape == () and loss.item() > 0
    loss.backward()
    assert student.grad.shape == student.shape and student.grad.abs().sum() > 0


def test_kd_loss_feature_axis_vanishes_on_identical_inputs_and_differs_from_time_axis():
    x, y = _t(4, 6, 3), _t(4, 6, 3, seed=2)
    assert kd_loss(x, x, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # faithful: softmax over time (dim 1) — adding a per-step constant changes nothing for the feature softmax only
    shifted = y + torch.arange(6.0)[None, :, None]
    assert kd_loss(x, shifted, 3.0).item() == pytest.approx(kd_loss(x, y, 3.0).item(), rel=1e-5)
    assert kd_loss(x, shifted, 3.0, faithful=True).item() != pytest.approx(kd_loss(x, y, 3.0, faithful=True).item(),
                                                                           rel=1e-3)


def test_kd_loss_reverse_direction_trains_the_teacher_slot():
    """O2: the C server of the authors puts the trainable global embedding in the target slot."""
    local, glob = _t(3, 5, 2), _t(3, 5, 2, seed=3, grad=True)
    kd_loss(local, glob, 3.0, faithful=True).backward()
    assert glob.grad is not None and glob.grad.abs().sum() > 0


def test_reconstruction_targets_are_time_reversed():
    x = _t(2, 5, 3)
    assert reversed_mse(torch.flip(x, dims=(1,)), x).item() == 0.0
    recon = {"a": torch.flip(x, dims=(1,)).requires_grad_(True), "b": torch.zeros(2, 5, 1, requires_grad=True)}
    loss = reconstruction_loss(recon, {"a": x, "b": torch.ones(2, 5, 1)})
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert recon["b"].grad.abs().sum() > 0 and recon["a"].grad.abs().sum() == 0


def test_classifier_loss_ignores_unlabelled_rows():
    logits = _t(2, 4, 3, grad=True)
    labels = torch.tensor([[0, 1, -1, 2], [-1, -1, 1, 0]])
    loss = classifier_loss(logits, labels)
    loss.backward()
    assert loss.shape == ()
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[1, 0].abs().sum() == 0
    assert logits.grad[0, 0].abs().sum() > 0


def test_prox_term_is_unsquared_l2_and_pulls_towards_anchor():
    w = [torch.tensor([3.0, 4.0], requires_grad=True), torch.zeros(2, requires_grad=True)]
    anchors = [torch.zeros(2), torch.zeros(2)]
    loss = prox_term(w, anchors)
    assert loss.item() == pytest.approx(5.0)
    loss.backward()
    assert torch.allclose(w[0].grad, torch.tensor([0.6, 0.8]))


def test_moon_loss_prefers_the_global_over_the_previous_representation():
    z = _t(4, 6, 2, grad=True)
    close = moon_loss(z, z.detach(), -z.detach(), 0.5)
    far = moon_loss(z, -z.detach(), z.detach(), 0.5)
    assert close.shape == () and close.item() < far.item()
    close.backward()
    assert z.grad.shape == z.shape


def test_f1_matches_hand_computed_values():
    y_true = np.array([0, 0, 0, 1, 1, 2, -1])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 0])
    s = f1_scores(y_true, y_pred, 3)
    f1 = np.array([0.8, 0.5, 2 / 3])                    # class-wise F1 (hand computed)
    assert s["f1_weighted"] == pytest.approx((f1 * [3, 2, 1]).sum() / 6)
    assert s["f1_macro"] == pytest.approx(f1.mean())
    assert s["accuracy"] == pytest.approx(4 / 6)
    constant = f1_scores(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)
    assert constant["f1_weighted"] == pytest.approx(2 / 3 * 0.8) and constant["f1_macro"] == pytest.approx(0.4)


def test_streaming_mean_equals_batch_mean_in_any_order():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(9)]
    weights = [1.0, 100.0, 1.0, 100.0, 1.0, 1.0, 100.0, 1.0, 1.0]
    expected = (np.average(np.stack(arrays).astype(np.float64), axis=0, weights=weights)).astype(np.float32)
    for order in (range(9), rng.permutation(9)):
        sm = StreamingMean()
        for i in order:
            sm.add("k", arrays[i], weights[i])
        np.testing.assert_array_equal(sm.mean()["k"], expected)
    assert sm.count("k") == sum(weights) and sm.count("absent") == 0
    with pytest.raises(ValueError):
        sm.add("k", np.zeros((2, 2), np.float32))


def test_embedding_mse_is_batchmean_scaled_and_trains_the_student():
    student, teacher = _t(4, 5, 3, grad=True), _t(4, 5, 3, seed=1)
    loss = embedding_mse(student, teacher)
    assert loss.item() == pytest.approx(((student - teacher) ** 2).sum().item() / 4)
    assert embedding_mse(teacher, teacher).item() == 0.0
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_relation_ignores_rotation_scale_and_width_of_the_latent_space():
    from fedmekt.learn.losses import relation

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, 4, generator=g)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))          # a random rotation of the space
    wide = torch.cat([z @ q * 3.0, torch.zeros(6, 5, 12)], dim=-1)  # rotated, scaled and 16 wide
    assert torch.allclose(relation(z), relation(wide), atol=1e-5)
    assert relation(z).shape == (6, 6) and torch.allclose(relation(z).diagonal(), torch.ones(6))


def test_relational_kd_vanishes_on_equal_structures_and_trains_the_student_only():
    from fedmekt.learn.losses import distillation_loss, relation, relational_kd

    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(8, 4, 2, generator=g)
    student = torch.randn(8, 4, 3, generator=g, requires_grad=True)
    assert relational_kd(relation(teacher), relation(teacher), 0.1) == pytest.approx(0.0, abs=1e-6)
    loss = distillation_loss(student, teacher, "relational", 3.0)
    assert loss > 0
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # a teacher given as its [N, N] relation (the server's mean of its clients') is the same target
    with torch.no_grad():
        again = distillation_loss(student, relation(teacher), "relational", 3.0)
    assert float(again) == pytest.approx(float(loss.detach()))
