"""Per-client teacher heads on the FedMEKT server (``hyper.server_teacher``, issue 19 §2c).

The paper's server matches the MEAN of its clients' embeddings of the round's proxy windows. Client encoders
start alike but train apart, so their latent spaces drift: a mean of embeddings from rotated spaces is no one's
representation. Here the server instead fits, per client k, a linear head (A_k, b_k) that predicts the client's
embedding z_k from the global one g, and trains its encoder so that every head predicts well:

    loss = mean over the round's clients k of  w_k · ||g A_k + b_k − z_k||² / s_k   (per window step)

where s_k is the variance of z_k and w_k a trust weight in [0, 1].

* Each head is fitted in closed form (ridge least squares) on the round's proxy windows, from the server's own
  downstream embeddings G (known before any upload) to the client's upload Z_k, and held fixed for the round's
  server steps: nothing is kept between rounds, so checkpoints and resumes are unchanged.
* Dividing by s_k makes a client's term its unexplained fraction of variance (1 − R² at the fit): the loss is
  invariant to any rotation and scale of a client's latent space, and to its width.
* ``heads-trust`` weights each client by w_k = max(R²_k, 0) of its fit: how far its representation agrees with the
  global one (CreamFL's agreement weighting, arXiv 2302.08888); ``heads`` uses w_k = 1. The weights are not
  renormalised, so a round of poorly fitting clients also weighs less against the server's reconstruction.
* For a fixed head the loss is a quadratic in g, so it travels through the server's ordinary per-key mean of the
  round as three per-client terms, averaged like any upload: M = w A Aᵀ / s, v = w (z − b) Aᵀ / s and
  c = w ||z − b||² / s. The means are order-free, so the in-process run and the MQTT deployment stay identical;
  ``robust_aggregation`` bounds each of the three on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RIDGE = 1e-3        # ridge of the head's fit, relative to the global embedding's variance per dimension
_VARIANCE_FLOOR = 1e-12
_PARTS = ("M", "v", "c")


def part_key(key: str, part: str) -> str:
    """Key of one of a teacher view's terms in the round's mean: ``<upload key>/heads/<M|v|c>``."""
    return f"{key}/heads/{part}"


@dataclass(frozen=True)
class HeadFit:
    """A client's head fitted on the round's windows: prediction = g @ weight + bias."""

    weight: np.ndarray   # [r_global, r_client]
    bias: np.ndarray     # [r_client]
    variance: float      # the client's embedding variance per step (sum over its dimensions)
    r2: float            # fraction of that variance the head explains


def fit_head(g: np.ndarray, z: np.ndarray, ridge: float = RIDGE) -> HeadFit:
    """Ridge least squares from the global embeddings ``g`` [..., r_g] to the client's ``z`` [..., r_k] (float64)."""
    gx = g.reshape(-1, g.shape[-1]).astype(np.float64)
    zx = z.reshape(-1, z.shape[-1]).astype(np.float64)
    g_mean, z_mean = gx.mean(0), zx.mean(0)
    gc, zc = gx - g_mean, zx - z_mean
    n = len(gx)
    gram = gc.T @ gc
    penalty = ridge * max(np.trace(gram) / gram.shape[0], _VARIANCE_FLOOR)
    weight = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), gc.T @ zc)
    variance = float(np.square(zc).sum() / n)
    residual = float(np.square(zc - gc @ weight).sum() / n)
    r2 = 1.0 - residual / variance if variance > _VARIANCE_FLOOR else 0.0
    return HeadFit(weight, z_mean - g_mean @ weight, variance, r2)


def teacher_view(key: str, g: np.ndarray, z: np.ndarray, trust: bool) -> dict[str, np.ndarray]:
    """The three terms one client adds to the round's mean for upload ``key`` (see the module docstring)."""
    fit = fit_head(g, z)
    w = max(fit.r2, 0.0) if trust else 1.0
    scale = w / max(fit.variance, _VARIANCE_FLOOR)
    target = z.astype(np.float64) - fit.bias
    return {part_key(key, "M"): (scale * fit.weight @ fit.weight.T).astype(np.float32),
            part_key(key, "v"): (scale * target @ fit.weight.T).astype(np.float32),
            part_key(key, "c"): (scale * np.square(target).sum(-1, keepdims=True)).astype(np.float32)}


@dataclass(frozen=True)
class HeadTargets:
    """The round's mean of the clients' teacher views for one embedding key, on the server's device."""

    M: torch.Tensor      # [r, r]
    v: torch.Tensor      # [W, T, r]
    c: torch.Tensor      # [W, T, 1]

    @classmethod
    def from_means(cls, means: dict[str, np.ndarray], key: str, device) -> "HeadTargets":
        part = {p: torch.from_numpy(np.asarray(means[part_key(key, p)])).to(device) for p in _PARTS}
        return cls(part["M"], part["v"], part["c"])

    @staticmethod
    def present(means: dict[str, np.ndarray], key: str) -> bool:
        return part_key(key, "M") in means

    def rows(self, idx) -> "HeadTargets":
        """The targets of the proxy windows ``idx`` (a distillation batch)."""
        return HeadTargets(self.M, self.v[idx], self.c[idx])

    def loss(self, g: torch.Tensor) -> torch.Tensor:
        """Mean over windows, steps and clients of the clients' weighted unexplained variance, for global
        embeddings ``g`` [n, T, r]."""
        quadratic = torch.einsum("ntr,rs,nts->nt", g, self.M, g) - 2.0 * (g * self.v).sum(-1) + self.c[..., 0]
        return quadratic.mean()
