"""Split LSTM autoencoder and the per-time-step linear head (spec §3).

Modalities are addressed by name (``"acce"``, ``"depth"``…) so that the same
names appear in configs, on the wire and in exported ONNX files.
"""

from __future__ import annotations

import torch
from torch import nn

HIDDEN = 32
VAR_EPS = 1e-6   # PooledMLPHead: keeps the std's gradient finite at a sequence's first step (variance 0)
POOL_STEPS = 24  # PooledMLPHead's lookback: the default window a package classifies (FederationConfig.window)


class StackedLSTM(nn.Module):
    """Two single-layer LSTMs in sequence: in → hidden → out.

    Kept as two modules (not ``num_layers=2``) because the first layer's output is
    itself an exchanged embedding ("hidden" layer) and the layers have different widths.
    Orthogonal init on the first LSTM only, as in the reference model.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.first = nn.LSTM(in_dim, hidden, batch_first=True)
        self.second = nn.LSTM(hidden, out_dim, batch_first=True)
        nn.init.orthogonal_(self.first.weight_ih_l0)
        nn.init.orthogonal_(self.first.weight_hh_l0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output [B, T, out], first-layer output [B, T, hidden])."""
        h, _ = self.first(x)
        out, _ = self.second(h)
        return out, h


class SplitAutoencoder(nn.Module):
    """One encoder and one decoder per modality; any modality's code decodes all of them.

    ``encode(x, m)`` gives the representation ``z`` [B, T, r] and hidden embedding
    ``h`` [B, T, 32]; ``forward(x, m)`` reconstructs every modality (time-reversed
    targets are the caller's business) from the last step of ``z``.
    """

    def __init__(self, channels: dict[str, int], rep_size: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.modalities = tuple(channels)
        self.channels = dict(channels)
        self.rep_size = rep_size
        self.hidden = hidden
        self.encoders = nn.ModuleDict({m: StackedLSTM(d, hidden, rep_size) for m, d in channels.items()})
        self.decoders = nn.ModuleDict({m: StackedLSTM(rep_size, hidden, d) for m, d in channels.items()})

    def encode(self, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoders[modality](x)

    def decode_all(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        seed = z[:, -1:, :].expand(-1, z.shape[1], -1)
        return {m: dec(seed)[0] for m, dec in self.decoders.items()}

    def forward(self, x: torch.Tensor, modality: str) -> dict[str, torch.Tensor]:
        z, _ = self.encode(x, modality)
        return self.decode_all(z)


class LinearHead(nn.Module):
    """The generalized classifier: one linear map applied at every time step (logits)."""

    def __init__(self, rep_size: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(rep_size, n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)


class MLPHead(nn.Module):
    """A small per-time-step MLP head (r → ``width`` → K): a deployable head with more capacity than the probe's
    linear map on a tiny r, still exported as plain MatMul/Relu ops."""

    def __init__(self, rep_size: int, n_classes: int, width: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = nn.Linear(rep_size, width)
        self.out = nn.Linear(width, n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(z)))


class PooledMLPHead(nn.Module):
    """``MLPHead`` on [z_t, mean of z over the last ``POOL_STEPS`` steps, their std] (3r → ``width`` → K).

    On r = 2–4 numbers per step one step says little; an activity shows in how z moves. The summary is causal
    (step t never sees a later step), restarts with every sequence the head is given (zero padding before it,
    not counted), and looks back a bounded stretch, so the package's last step of a window, a training crop and
    a long evaluation chunk all pool alike (a summary over a whole 2000-step chunk would mix activities).
    Exported as Conv/Sqrt/MatMul ops, the time axis dynamic.
    """

    def __init__(self, rep_size: int, n_classes: int, width: int = HIDDEN) -> None:
        super().__init__()
        self.mlp = MLPHead(3 * rep_size, n_classes, width)
        # a depthwise causal sum over POOL_STEPS steps of [1, z, z²]; not a parameter, so not in the state
        self.register_buffer("window", torch.ones(2 * rep_size + 1, 1, POOL_STEPS), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.ones_like(z[..., :1]), z, z * z], dim=-1).transpose(1, 2)
        sums = nn.functional.conv1d(x, self.window, padding=POOL_STEPS - 1, groups=x.shape[1])
        sums = sums[..., : 1 - POOL_STEPS].transpose(1, 2)   # output t sums inputs t - POOL_STEPS + 1..t
        r = z.shape[-1]
        mean = sums[..., 1:r + 1] / sums[..., :1]
        var = sums[..., r + 1:] / sums[..., :1] - mean * mean
        std = torch.sqrt(torch.clamp(var, min=0.0) + VAR_EPS)
        return self.mlp(torch.cat([z, mean, std], dim=-1))


HEADS = {"linear": LinearHead, "mlp": MLPHead, "mlp-pool": PooledMLPHead}


def build_head(kind: str, rep_size: int, n_classes: int) -> nn.Module:
    """The head named ``kind`` (``HEADS``)."""
    return HEADS[kind](rep_size, n_classes)


class EncoderClassifier(nn.Module):
    """Encoder of one modality followed by the head: what gateways run for inference."""

    def __init__(self, encoder: StackedLSTM, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (embedding z [B, T, r], logits [B, T, K])."""
        z, _ = self.encoder(x)
        return z, self.head(z)
