"""The deployed model (issue 19 §3): what a gateway's package runs, beside the probe that stays the research metric.

Federation pretrains, labels fine-tune. The probe (``fedmekt.learn.evaluation.modality_probes``) asks how
good the federation's frozen representation is; a user deploying a model asks what the best classifier is
that the server can build from it and its labelled set. So the deployed model is a COPY of the federation's
encoders with a head (``hyper.deploy_head``: the federation's own linear head, or a fresh small MLP on each
step's z or, ``"mlp-pool"``, on z with its mean and std over the last ``POOL_STEPS`` steps), trained
end to end on the server's labelled set for ``hyper.deploy_rounds`` rounds of the classifier's schedule (each
``classifier_epochs`` walks per label modality, bounded by ``classifier_step_budget``: the cost is bounded
and known) at ``hyper.lr_deploy``; ``deploy_tune_encoder`` False trains the head alone. ``deploy_rounds`` = 0
is the federation's head on its frozen encoders (the deployed model before issue 19 §3). The recipe is
chosen on validation units only (``scripts/select_fedmekt_c.py --deploy``, docs/fedmekt-c-selection.md).

Deterministic: the head's initialisation and every walk come from generators seeded by (``seed``, round);
the global RNGs and the federation's model and head are untouched, so the same seed and global model give
the same deployed model in ``reproduce``, ``simulate`` and the MQTT deployment.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedmekt.concurrency import seeded_torch
from fedmekt.config import FederationConfig
from fedmekt.learn.evaluation import train_classifier_round
from fedmekt.learn.model import HEADS, LinearHead, SplitAutoencoder, build_head
from sensors.partition import Partition

DEPLOYED = "deployed."   # the deployed model's keys in a run's model state: ``deployed.encoders.*``, ``….head.*``
Stop = Callable[[], bool] | None   # asked between two rounds (or steps) of a long derivation: True ends it


class Stopped(Exception):
    """A derivation ended early because its ``stop`` said so (the aggregator is closing): nothing was made."""


def check_stop(stop: Stop) -> None:
    if stop is not None and stop():
        raise Stopped("stopped")


@dataclass
class DeployedModel:
    """Encoders (inside a copy of the split autoencoder; its decoders are the federation's, unused) and a head."""

    model: SplitAutoencoder
    head: nn.Module
    steps: int   # fine-tuning optimizer steps (0: the federation's head on its frozen encoders)

    def state(self, prefix: str = DEPLOYED) -> dict[str, np.ndarray]:
        """``<prefix>encoders.<m>.*`` and ``<prefix>head.*`` float32 arrays (what a run folder keeps)."""
        out = {f"{prefix}encoders.{k}": v.detach().cpu().numpy() for k, v in self.model.encoders.state_dict().items()}
        out.update({f"{prefix}head.{k}": v.detach().cpu().numpy() for k, v in self.head.state_dict().items()})
        return out


def deploy(model: SplitAutoencoder, head: LinearHead, labelled: Partition, cfg: FederationConfig, n_classes: int,
           device: torch.device, seed: int, stop: Stop = None) -> DeployedModel:
    """The deployed model of the federation's ``model`` and ``head`` by ``cfg.hyper``'s recipe (module doc);
    ``stop`` is asked before each fine-tuning round (:class:`Stopped`)."""
    h = cfg.hyper
    model = copy.deepcopy(model)
    if h.deploy_head == "linear":
        head = copy.deepcopy(head)   # warm start: the federation's head, already fitted to these encoders
    else:
        with seeded_torch(seed):
            head = build_head(h.deploy_head, model.rep_size, n_classes).to(device)
    if h.deploy_rounds == 0:
        return DeployedModel(model.eval(), head.eval(), 0)
    params = list(head.parameters())
    if h.deploy_tune_encoder:
        params += [p for m in cfg.label_modalities for p in model.encoders[m].parameters()]
    opt = torch.optim.Adam(params, lr=h.lr_deploy)
    for k in range(h.deploy_rounds):
        check_stop(stop)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, k])))
        train_classifier_round(model, head, opt, labelled, cfg, rng, device, tune_encoder=h.deploy_tune_encoder)
    state = opt.state.get(params[0], {})
    return DeployedModel(model.eval(), head.eval(), int(torch.as_tensor(state.get("step", 0)).item()))


def load_deployed(state: dict, model: SplitAutoencoder, n_classes: int,
                  prefix: str = DEPLOYED) -> DeployedModel | None:
    """The deployed model kept under ``prefix`` in a run's model ``state`` (``DeployedModel.state``) on a copy of
    ``model``, its head's kind read from its parameter names; None when the state has none (written before issue
    19 §3). ValueError when the state is not one (unknown head, wrong shapes)."""
    encoders, head_prefix = f"{prefix}encoders.", f"{prefix}head."
    enc = {k[len(encoders):]: torch.as_tensor(v) for k, v in state.items() if k.startswith(encoders)}
    if not enc:
        return None
    head_state = {k[len(head_prefix):]: torch.as_tensor(v) for k, v in state.items() if k.startswith(head_prefix)}
    kinds = [k for k, cls in HEADS.items() if set(cls(1, 1).state_dict()) == set(head_state)]
    if not kinds:
        raise ValueError(f"the deployed head's parameters {sorted(head_state)} are no known head ({', '.join(HEADS)})")
    model = copy.deepcopy(model)
    head = build_head(kinds[0], model.rep_size, n_classes)
    try:
        model.encoders.load_state_dict(enc, strict=True)
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as exc:
        raise ValueError(str(exc).strip().splitlines()[0]) from None
    return DeployedModel(model.eval(), head.eval(), 0)
