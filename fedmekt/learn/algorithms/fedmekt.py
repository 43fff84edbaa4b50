"""FedMEKT-C and FedMEKT-S: embedding knowledge transfer on the round's proxy windows (spec §4.4–4.8).

Downstream knowledge = the global model's embeddings (z, and h with ``layers="rep+hidden"``) of every
modality on Π_t; upstream = the client's embeddings of Π_t for each modality it holds. The server distils on
the SAME windows Π_t (fixes B1–B3), by default through a linear head per client that predicts the client's
embedding from the global one (or from its hidden layer: ``hyper.heads_from``), each client weighted by its head's
fit (``hyper.server_teacher`` "heads-trust", fedmekt/learn/teacher_heads.py); "mean" is the paper's: the
per-modality mean of the uploads, matched by KD.

* C (joint): an A+B client / the server (mean teacher) compares the modalities' embeddings stacked and passed
  through the fixed seeded projections (O4); one step on everything.
* S (separate): per modality, one step on that encoder and all decoders.
* The clients' distillation term (and the server's under the mean teacher) is ``hyper.kd``: "kl" (default) is
  the paper's softmax KD at temperature T over the feature axis; "mse" matches the embeddings themselves
  (``embedding_mse``). On held-out labelled units (never test data) the two are within seed noise, "kl" ahead
  by about 0.01 (docs/fedmekt-c-selection.md).
* ``cfg.server_proxy_walk``: each server epoch also walks the whole proxy set in random crops (reconstruction
  only, no KD, nothing sent), restoring the reference server's training volume (it distils on all of the
  proxy set because it exchanges all of it), at most ``hyper.server_walk_step_budget`` steps per round.
* A client walks at most ``hyper.local_step_budget`` private sub-windows per round (``base.private_epoch``).
* ``cfg.faithful`` keeps the paper's mean teacher, O1 (time-axis softmax KL, inside ``kd_loss``, whatever
  ``hyper.kd`` says), O2 (C server: the trainable global embedding in the teacher slot) and O3 (C: KD terms
  counted twice).
  Default: standard direction, once.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmekt.learn.algorithms.base import (
    Algorithm, Party, ProxyWindows, Tensors, check_tensors, cross_modal_alignment, dec, emb_key, enc, epoch_steps,
    exchanged_layers, inputs_only, masked, private_epoch, reconstruct, to_numpy,
)
from fedmekt.learn import teacher_heads
from fedmekt.learn.losses import distillation_loss, reconstruction_loss, relation, reversed_mse
from fedmekt.learn.teacher_heads import HeadTargets
from sensors.partition import Partition


class FedMEKT(Algorithm):
    """Both variants; ``joint`` selects C (True) or S (False)."""

    def __init__(self, joint: bool) -> None:
        self.joint = self.aligns = joint
        self.name = "fedmekt-c" if joint else "fedmekt-s"

    # ---- shapes and weights -------------------------------------------------------------------------
    def upload_spec(self, party: Party, modalities, n_windows: int) -> dict[str, tuple[int, ...]]:
        width = {"z": party.model.rep_size, "h": party.model.hidden}
        return {emb_key(m, layer): (n_windows, party.cfg.window, width[layer])
                for m in modalities for layer in exchanged_layers(party.cfg)}

    # ---- both sides ---------------------------------------------------------------------------------
    def _embed(self, party: Party, proxy: ProxyWindows, modalities, layers: tuple[str, ...] | None = None) -> Tensors:
        """Embeddings of Π_t for ``layers`` (default: the exchanged ones)."""
        layers = layers or exchanged_layers(party.cfg)
        out = {}
        with torch.no_grad():
            for m in modalities:
                emb = dict(zip(("z", "h"), party.model.encode(proxy.x[m], m)))
                out.update({emb_key(m, ly): to_numpy(emb[ly]) for ly in layers})
        return out

    def _kd(self, party: Party, student: dict[str, tuple], teacher: dict[str, tuple], weights: tuple[float, float],
            reverse: bool = False) -> torch.Tensor:
        """Weighted KD over the exchanged layers; ``student``/``teacher`` map modality -> (z, h).

        Joint (C): one KL per layer on the projected, batch-stacked modalities. Separate (S) or a single
        modality: plain per-layer KL. ``reverse`` puts the trainable tensor in the teacher slot (O2).
        """
        cfg = party.cfg
        mods = [m for m in student if m in teacher]
        total = torch.zeros((), device=party.device)
        for i, layer in enumerate(exchanged_layers(cfg)):
            if self.joint and len(mods) > 1 and not self._relational(cfg):
                s = party.projections.joint(layer, [student[m][i] for m in mods])
                t = party.projections.joint(layer, [teacher[m][i] for m in mods])
                pairs = [(s, t)]
            else:
                pairs = [(student[m][i], teacher[m][i]) for m in mods]
            for s, t in pairs:
                a, b = (t, s) if reverse else (s, t)
                term = distillation_loss(a, b, cfg.hyper.kd, cfg.hyper.temperature, faithful=cfg.faithful,
                                         relation_tau=cfg.hyper.relation_tau)
                total = total + weights[i] * term
        return total * (2.0 if (cfg.faithful and self.joint and len(mods) > 1) else 1.0)

    def _align(self, party: Party, x: dict[str, torch.Tensor], z: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``hyper.align``'s term (C only: S trains each modality on its own)."""
        return cross_modal_alignment(party, x, z) if self.aligns else torch.zeros((), device=party.device)

    @staticmethod
    def _relational(cfg) -> bool:
        """Relational KD compares each modality's structure with its own (width-free: no joint projection)."""
        return cfg.hyper.kd == "relational" and not cfg.faithful

    # ---- server -------------------------------------------------------------------------------------
    def downstream(self, server: Party, proxy: ProxyWindows | None) -> Tensors:
        return self._embed(server, proxy, server.modalities)

    def teacher_basis(self, server: Party, proxy: ProxyWindows | None, down: Tensors) -> Tensors:
        """The downstream, plus the server's hidden embeddings of Π_t where the heads read them (never sent)."""
        cfg = server.cfg
        if cfg.server_teacher == "mean" or cfg.hyper.heads_from == "rep" or "h" in exchanged_layers(cfg):
            return dict(down)
        return {**down, **self._embed(server, proxy, server.modalities, ("h",))}

    def teacher_view(self, server: Party, upload: Tensors, knowledge: Tensors) -> Tensors:
        """Relational KD averages each client's similarity structure [W, W], not its embeddings: a mean of
        embeddings from latent spaces that drifted apart is no one's structure. Per-client heads
        (``hyper.server_teacher``) average the terms of each client's head fitted to the server's ``knowledge``
        of the same layer, or of its hidden layer (``hyper.heads_from``)."""
        teacher = server.cfg.server_teacher
        if teacher != "mean":
            trust = teacher == "heads-trust"
            hidden = server.cfg.hyper.heads_from == "hidden"
            return {name: v for k in sorted(upload)
                    for name, v in teacher_heads.teacher_view(
                        k, knowledge[_hidden_key(k) if hidden else k], upload[k], trust).items()}
        if not self._relational(server.cfg):
            return upload
        with torch.no_grad():
            return {k: to_numpy(relation(torch.from_numpy(v))) for k, v in upload.items()}

    def server_update(self, server: Party, means: Tensors, proxy: ProxyWindows | None,
                      rng: np.random.Generator, round_: int) -> dict[str, float]:
        cfg, h = server.cfg, server.cfg.hyper
        rec = not (h.server_rec_rounds and round_ >= h.server_rec_rounds)   # after the warm-up: knowledge alone
        layers = exchanged_layers(cfg)
        if cfg.server_teacher != "mean":   # modality -> (head targets of z, of h) for modalities some client reported
            targets = {m: tuple(HeadTargets.from_means(means, emb_key(m, ly), server.device) for ly in layers)
                       for m in server.modalities if HeadTargets.present(means, emb_key(m, "z"))}
            take = HeadTargets.rows
        else:            # modality -> (z̄, h̄) tensors for modalities some client reported this round
            targets = {m: tuple(torch.from_numpy(means[emb_key(m, ly)]).to(server.device) for ly in layers)
                       for m in server.modalities if emb_key(m, "z") in means}
            take = _relation_rows if self._relational(cfg) else (lambda t, idx: t[idx])
        losses = []
        walk = epoch_steps(h.server_walk_step_budget, h.global_epochs)
        source = (inputs_only([proxy.source, server.unlabelled], server.modalities)
                  if cfg.server_walk_labelled and server.unlabelled is not None else proxy.source)
        for _ in range(h.global_epochs):
            for idx in proxy.epoch(rng, cfg.proxy_batch):
                x = {m: proxy.x[m][idx] for m in server.modalities}
                tgt = {m: tuple(take(t, idx) for t in v) for m, v in targets.items()}
                if rec or tgt:
                    losses += self._server_step(server, x, tgt, rec)
            if cfg.server_proxy_walk and rec:
                for x, _labels in private_epoch(source, server.modalities, cfg, rng, server.device, walk):
                    self._server_step(server, x, {})
        return {"loss_server": float(np.mean(losses)) if losses else float("nan")}

    def _server_step(self, server: Party, x: dict[str, torch.Tensor], tgt: dict[str, tuple],
                     rec: bool = True) -> list[float]:
        """Reconstruction of every modality from each one (unless ``rec`` is False), plus KD towards ``tgt`` (none
        on a walk step)."""
        mods = server.modalities
        if self.joint:
            recon = sum(reconstruction_loss(server.model(x[m], m), x) for m in mods) if rec else 0.0
            emb = {m: server.model.encode(x[m], m) for m in tgt}
            kd = self._server_kd(server, emb, tgt)
            align = self._align(server, x, {m: e[0] for m, e in emb.items()})
            return [server.optim.step(recon + kd + align, [enc(m) for m in mods] + [dec(m) for m in mods])]
        losses = []
        for m in (m for m in mods if rec or m in tgt):
            loss = reconstruction_loss(server.model(x[m], m), x) if rec else 0.0
            if m in tgt:
                loss = loss + self._server_kd(server, {m: server.model.encode(x[m], m)}, {m: tgt[m]})
            losses.append(server.optim.step(loss, [enc(m)] + [dec(k) for k in mods]))
        return losses

    def _server_kd(self, server: Party, emb: dict[str, tuple], tgt: dict[str, tuple]) -> torch.Tensor:
        """The server's KD term: towards the clients' mean at weights (η, γ), or through their heads."""
        h = server.cfg.hyper
        if server.cfg.server_teacher == "mean":
            return self._kd(server, emb, tgt, (h.eta, h.gamma), reverse=server.cfg.faithful)
        hidden = h.heads_from == "hidden"   # emb[m] = (z, h): every head reads h, or each reads its own layer
        return h.heads_weight * sum((t.loss(emb[m][1 if hidden else i]) for m in tgt for i, t in enumerate(tgt[m])),
                                    torch.zeros((), device=server.device))

    # ---- client -------------------------------------------------------------------------------------
    def client_train(self, client: Party, down: Tensors, private: Partition, proxy: ProxyWindows | None,
                     rng: np.random.Generator) -> Tensors:
        cfg, h = client.cfg, client.cfg.hyper
        mods = client.modalities
        check_tensors(down, self.upload_spec(client, mods, len(proxy)), "downstream")
        layers = exchanged_layers(cfg)
        teacher = {m: tuple(torch.from_numpy(down[emb_key(m, ly)]).to(client.device) for ly in layers) for m in mods}
        batches = proxy.cycle(rng, cfg.proxy_batch)
        for _ in range(h.local_epochs):
            for xs, _labels in private_epoch(private, mods, cfg, rng, client.device,
                                             epoch_steps(h.local_step_budget, h.local_epochs)):
                idx = next(batches)
                p = {m: proxy.x[m][idx] for m in mods}
                tgt = {m: tuple(t[idx] for t in teacher[m]) for m in mods}
                seen = masked(xs, h.mask_ratio, rng)   # the encoders' input; the reconstruction targets stay xs
                if len(mods) == 1:
                    m = mods[0]
                    loss = reversed_mse(reconstruct(client.model, seen[m], m, (m,))[m], xs[m])
                    loss = loss + self._kd(client, {m: client.model.encode(p[m], m)}, tgt, (h.alpha, h.beta))
                    client.optim.step(loss, [enc(m), dec(m)])
                elif self.joint:
                    rec = sum(reconstruction_loss(client.model(seen[m], m), xs) for m in mods)
                    emb = {m: client.model.encode(p[m], m) for m in mods}
                    loss = rec + self._kd(client, emb, tgt, (h.alpha, h.beta)) + self._align(client, xs)
                    client.optim.step(loss, [enc(m) for m in mods] + [dec(m) for m in mods])
                else:
                    for m in mods:
                        loss = reconstruction_loss(client.model(seen[m], m), xs)
                        loss = loss + self._kd(client, {m: client.model.encode(p[m], m)}, {m: tgt[m]},
                                               (h.alpha, h.beta))
                        client.optim.step(loss, [enc(m)] + [dec(k) for k in mods])
        return self._embed(client, proxy, mods)


def _hidden_key(key: str) -> str:
    """``emb/<m>/z`` or ``emb/<m>/h`` -> ``emb/<m>/h``: the server's hidden embedding a head reads."""
    return f"{key.rsplit('/', 1)[0]}/h"


def _relation_rows(rel: torch.Tensor, idx) -> torch.Tensor:
    """The [n, n] block of a [W, W] mean relation for the batch's proxy windows ``idx``."""
    return rel[idx][:, idx]
