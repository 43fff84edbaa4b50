"""Loss terms of FedMEKT and the multimodal baselines (spec §4.1, §4.4, §7).

All functions are pure tensor maths with no state; the algorithms decide which tensors are trainable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, faithful: bool = False) -> torch.Tensor:
    """Temperature-scaled distillation T²·KL(q_teacher ‖ p_student) for [N, w, C] embeddings.

    Both modes keep the reference's ``batchmean`` scaling (sum over steps and channels, divide by N) so the
    weights α, β, η, γ keep their meaning. Default: softmax over the FEATURE axis (a distribution per time
    step) and an exact KL. ``faithful=True`` reproduces ``KL_Loss`` of the authors (O1): softmax over the
    TIME axis (dim 1) and ``+1e-7`` added to the teacher probabilities after the softmax.
    Gradients flow into whichever argument is not detached (the caller chooses the direction, O2).
    """
    dim = 1 if faithful else -1
    logp = F.log_softmax(student / temperature, dim=dim)
    if faithful:
        q = F.softmax(teacher / temperature, dim=dim) + 1e-7
        kl = (q * (q.log() - logp)).sum()
    else:
        logq = F.log_softmax(teacher / temperature, dim=dim)
        kl = (logq.exp() * (logq - logp)).sum()
    return temperature**2 * kl / student.shape[0]


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Embedding matching Σ(student − teacher)² / N for [N, w, C] embeddings (``hyper.kd = "mse"``).

    Same ``batchmean`` scaling as ``kd_loss`` (sum over steps and channels, divide by N), so α, β, η, γ weigh
    it on the same footing. Unlike a softmax KD it sees the embeddings' scale: a softmax over r = 2 features
    of LSTM outputs in (−1, 1) at T = 3 is close to uniform (docs/fedmekt-c-selection.md compares the two).
    """
    return ((student - teacher) ** 2).sum() / student.shape[0]


def reversed_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSE against the time-reversed input window (the split AE reconstructs x[:, ::-1])."""
    return F.mse_loss(recon, torch.flip(x, dims=(1,)))


def reconstruction_loss(recons: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of reversed-window MSEs over the modalities present in both dicts (one modality in, these out)."""
    return sum(reversed_mse(recons[m], inputs[m]) for m in inputs if m in recons)


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-step cross-entropy over [B, w, K] logits; label -1 (unlabelled row) is ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-1)


def prox_term(params: list[torch.Tensor], anchors: list[torch.Tensor]) -> torch.Tensor:
    """mm-FedProx penalty as in the official code (O7): Σ over tensors of the UN-squared L2 norm ‖w − w_g‖₂."""
    return sum(torch.linalg.vector_norm(p - a) for p, a in zip(params, anchors))


def moon_loss(z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor, tau: float) -> torch.Tensor:
    """mm-MOON contrastive term as in the official code (O7): cosine over the time axis of [B, w, r]."""
    pos = F.cosine_similarity(z, z_global, dim=1).mean() / tau
    neg = F.cosine_similarity(z, z_prev, dim=1).mean() / tau
    return -torch.log(pos.exp() / (pos.exp() + neg.exp()))
