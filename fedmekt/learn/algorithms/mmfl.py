"""Parameter-exchange baselines: mm-FedAvg, mm-FedProx, mm-MOON (spec §7).

Downstream = the global autoencoder's parameters (``param/<state_dict key>``; a client receives the encoder
and decoder of each modality it holds). Upstream = the same keys after local training. The server takes,
per key, the weighted mean over the clients that sent it, with weight ``mm_weight`` (100) for A+B clients
and 1 for unimodal ones (``uAvg:68-76``) — so each modality's encoder/decoder is averaged over the clients
holding that modality.

A unimodal client reconstructs its own modality (its encoder and decoder train); an A+B client takes two
steps per window, input A then input B, each reconstructing both modalities (encoder of the input modality
and both decoders train). FedProx (un-squared L2 on the trained encoder) and MOON (cosine over time, no
projection head) are "mm-variants as in the official code" (O7); gradients no longer accumulate between the
two steps (O5). ``hyper.align`` adds the cross-modal term on an A+B client's windows to both steps, as
FedMEKT-C's clients do; each step trains only its input's encoder, so each side of it moves once per window.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from fedmekt.learn.algorithms.base import (
    Algorithm, Party, ProxyWindows, Tensors, check_tensors, cross_modal_alignment, dec, enc, epoch_steps, masked,
    param_key, private_epoch, reconstruct, to_numpy,
)
from fedmekt.learn.losses import moon_loss, prox_term, reconstruction_loss
from sensors.partition import Partition


def modality_keys(party: Party, modalities) -> list[str]:
    """state_dict keys of the encoders/decoders of ``modalities``."""
    prefixes = tuple(f"{kind}.{m}." for m in modalities for kind in ("encoders", "decoders"))
    return [k for k in party.model.state_dict() if k.startswith(prefixes)]


class MultimodalFedAvg(Algorithm):
    """mm-FedAvg; ``variant`` "prox" or "moon" adds that local regulariser."""

    def __init__(self, variant: str = "") -> None:
        self.variant = variant
        self.name = {"": "mmfedavg", "prox": "mmfedprox", "moon": "mmmoon"}[variant]

    def upload_spec(self, party: Party, modalities, n_windows: int) -> dict[str, tuple[int, ...]]:
        state = party.model.state_dict()
        return {param_key(k): tuple(state[k].shape) for k in modality_keys(party, modalities)}

    def client_weight(self, cfg, modalities) -> float:
        return cfg.hyper.mm_weight if len(modalities) > 1 else 1.0

    def downstream(self, server: Party, proxy: ProxyWindows | None) -> Tensors:
        return {param_key(k): to_numpy(v) for k, v in server.model.state_dict().items()}

    def server_update(self, server: Party, means: Tensors, proxy: ProxyWindows | None,
                      rng: np.random.Generator, round_: int) -> dict[str, float]:
        state = {k[len("param/"):]: torch.from_numpy(v) for k, v in means.items()}
        server.model.load_state_dict(state, strict=False)
        return {}

    def client_train(self, client: Party, down: Tensors, private: Partition, proxy: ProxyWindows | None,
                     rng: np.random.Generator) -> Tensors:
        cfg, h = client.cfg, client.cfg.hyper
        mods = client.modalities
        check_tensors(down, self.upload_spec(client, mods, 0), "downstream")
        previous = copy.deepcopy(client.model).requires_grad_(False) if self.variant == "moon" else None
        received = {k[len("param/"):]: torch.from_numpy(v).to(client.device) for k, v in down.items()}
        client.model.load_state_dict(received, strict=False)
        glob = copy.deepcopy(client.model).requires_grad_(False) if self.variant else None
        losses = []
        for _ in range(h.local_epochs):
            for xs, _labels in private_epoch(private, mods, cfg, rng, client.device,
                                             epoch_steps(h.local_step_budget, h.local_epochs)):
                seen = masked(xs, h.mask_ratio, rng)   # the encoders' input; the reconstruction targets stay xs
                for m in mods:
                    loss = reconstruction_loss(reconstruct(client.model, seen[m], m, mods), xs)
                    loss = loss + cross_modal_alignment(client, xs)   # each step trains only enc(m)'s side of it
                    if self.variant == "prox":
                        loss = loss + h.prox_mu * prox_term(list(client.model.encoders[m].parameters()),
                                                            list(glob.encoders[m].parameters()))
                    elif self.variant == "moon":
                        z = client.model.encode(xs[m], m)[0]
                        with torch.no_grad():
                            z_g, z_p = glob.encode(xs[m], m)[0], previous.encode(xs[m], m)[0]
                        loss = loss + h.moon_mu * moon_loss(z, z_g, z_p, h.moon_tau)
                    losses.append(client.optim.step(loss, [enc(m)] + [dec(k) for k in mods]))
        state = client.model.state_dict()
        return {param_key(k): to_numpy(state[k]) for k in modality_keys(client, mods)}
