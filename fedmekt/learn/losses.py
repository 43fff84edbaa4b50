"""Loss terms of FedMEKT and the multimodal baselines (spec §4.1, §4.4, §7).

All functions are pure tensor maths with no state; the algorithms decide which tensors are trainable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, faithful: bool = False,
            over_time: bool = False) -> torch.Tensor:
    """Temperature-scaled distillation T²·KL(q_teacher ‖ p_student) for [N, w, C] embeddings.

    Both modes keep the reference's ``batchmean`` scaling (sum over steps and channels, divide by N) so the
    weights α, β, η, γ keep their meaning. Default: softmax over the FEATURE axis (a distribution per time
    step) and an exact KL. ``faithful=True`` reproduces ``KL_Loss`` of the authors (O1): softmax over the
    TIME axis (dim 1) and ``+1e-7`` added to the teacher probabilities after the softmax; ``over_time``
    takes the time-axis softmax with an exact KL.
    Gradients flow into whichever argument is not detached (the caller chooses the direction, O2).
    """
    dim = 1 if faithful or over_time else -1
    logp = F.log_softmax(student / temperature, dim=dim)
    if faithful:
        q = F.softmax(teacher / temperature, dim=dim) + 1e-7
        kl = (q * (q.log() - logp)).sum()
    else:
        logq = F.log_softmax(teacher / temperature, dim=dim)
        kl = (logq.exp() * (logq - logp)).sum()
    return temperature**2 * kl / student.shape[0]


def relation(z: torch.Tensor) -> torch.Tensor:
    """[N, w, C] embeddings of N windows -> [N, N] cosine similarities of their time-pooled codes.

    What a latent space says about the windows, not where it puts them: unchanged by a rotation or scaling of
    the space and defined for any width C, so clients whose spaces drifted apart (or differ in size) can be
    averaged and matched (FedHeNN, arXiv 2202.07757; FedX, 2207.09158). Pooled over time because neighbouring
    steps of one window are near duplicates.
    """
    a = F.normalize(z.mean(dim=1), dim=-1)
    return a @ a.T


def relational_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(row-softmax(teacher / τ) ‖ row-softmax(student / τ)) between [N, N] relations, summed over rows and
    divided by N (``batchmean``, like ``kd_loss``). The diagonal (every window's similarity to itself, 1 in
    both) is left out: it carries nothing and would dominate each row."""
    n = student.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    logp = F.log_softmax(student[off].view(n, n - 1) / tau, dim=-1)
    logq = F.log_softmax(teacher[off].view(n, n - 1) / tau, dim=-1)
    return (logq.exp() * (logq - logp)).sum() / n


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float, *,
                      faithful: bool = False, relation_tau: float = 0.1) -> torch.Tensor:
    """The KD term ``hyper.kd`` between [N, w, C] embeddings (``faithful`` forces the authors' KL, O1).

    "kl": softmax over features per step (the paper); "kl-time": softmax over the w steps per channel
    (a distribution with w outcomes, so it carries signal at r = 2 where a 2-way softmax of values in
    (−1, 1) at T = 3 is near uniform), exact KL, standard direction; "mse": the embeddings themselves;
    "kl-std" / "mse-std": the same on targets standardised per channel by the teacher's batch statistics
    (detached; the student is mapped by the same affine, so the optimum is unchanged); "relational": the
    windows' similarity structure (``relational_kd`` at ``relation_tau``); ``teacher`` may then already be a
    [N, N] relation (the server's mean of its clients' relations).
    """
    if faithful:
        return kd_loss(student, teacher, temperature, faithful=True)
    if kind == "relational":
        return relational_kd(relation(student), teacher if teacher.dim() == 2 else relation(teacher), relation_tau)
    if kind.endswith("-std"):
        ref = teacher.detach()
        mean, std = ref.mean(dim=(0, 1), keepdim=True), ref.std(dim=(0, 1), keepdim=True) + 1e-6
        student, teacher, kind = (student - mean) / std, (teacher - mean) / std, kind[: -len("-std")]
    if kind == "mse":
        return embedding_mse(student, teacher)
    return kd_loss(student, teacher, temperature, over_time=kind == "kl-time")


def alignment_loss(za: torch.Tensor, zb: torch.Tensor, kind: str, tau: float = 0.1) -> torch.Tensor:
    """Cross-modal alignment of two modalities' representations of the SAME aligned windows [N, w, r].

    "mse": mean squared difference per step; "cosine": 1 − cosine per step (feature axis); "infonce":
    symmetric InfoNCE over the batch's windows (time-pooled z, the other windows are the negatives;
    pooling because neighbouring steps of one window are near duplicates, not negatives).
    """
    if kind == "mse":
        return F.mse_loss(za, zb)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(za, zb, dim=-1)).mean()
    a, b = F.normalize(za.mean(dim=1), dim=-1), F.normalize(zb.mean(dim=1), dim=-1)
    logits = a @ b.T / tau
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


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
