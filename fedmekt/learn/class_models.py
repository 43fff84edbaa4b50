"""A narrower device class's deployable model, distilled on the server from the global one (issue 22).

The server trains one global model, of the widest class the federation accepts. A narrower class's gateways
can neither run it nor receive its parameters averaged with theirs, so the server builds that class an encoder
of its own width: the student's representation z is fitted (MSE) to the global encoder's z on random crops of
the inputs the server holds (the proxy set and the labelled set's inputs, labels unread). The student is then
deployed as the global model is (fedmekt/learn/deploy.py: the deploy recipe chosen on validation, fine-tuning
it and a head on the labelled set), so every class ships a model built the same way, as HeteroFL's slices are.
Matching z rather than logits keeps the student in the global latent space the federation's head reads, so a
linear recipe's warm-started head starts right. No bytes are sent and no client data is read.

A run folder keeps each narrower class's model under ``class.<class>.`` (:meth:`ClassModel.state`), so
``fedmekt export --device-class`` builds that class's package from a finished run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedmekt.config import FederationConfig
from fedmekt.learn.algorithms.base import inputs_only, private_epoch
from fedmekt.learn.deploy import DeployedModel, Stop, check_stop, deploy
from fedmekt.learn.model import LinearHead, SplitAutoencoder
from sensors.partition import Partition


@dataclass
class ClassModel:
    """What one device class deploys: the encoders (inside a split autoencoder) and the head."""

    device_class: str
    model: SplitAutoencoder
    head: nn.Module  # the deployed head: linear or MLP (fedmekt/learn/deploy.py)
    distilled: SplitAutoencoder | None = None   # the student before deployment: the class's next package warm-starts
                                                # from it, so label fine-tuning never compounds across packages

    @property
    def encoder_params(self) -> int:
        """Parameters of the encoders the class's package ships (decoders stay on the server)."""
        return sum(p.numel() for p in self.model.encoders.parameters())

    def state(self) -> dict[str, np.ndarray]:
        """Its encoders and head as a run folder keeps them (``class.<class>.encoders.*``, ``….head.*``)."""
        return DeployedModel(self.model, self.head, 0).state(class_prefix(self.device_class))


def class_prefix(device_class: str) -> str:
    """Where a run's model state keeps a narrower class's deployable model (``fedmekt/learn/deploy.py`` keys)."""
    return f"class.{device_class}."


def distil_class_model(device_class: str, teacher: SplitAutoencoder, head: LinearHead, student: SplitAutoencoder,
                       proxy: Partition, labelled: Partition, cfg: FederationConfig, rng: np.random.Generator,
                       device: torch.device, budget: int, n_classes: int, deploy_seed: int,
                       stop: Stop = None) -> ClassModel:
    """Fit ``student``'s encoders to ``teacher``'s z, then deploy it with ``head`` (see the module doc).

    ``budget`` sub-window steps (epochs of fresh crops until spent; ``hyper.class_distil_steps`` from a fresh
    student, ``class_distil_warm_steps`` from the class's previous one), every modality of the pair per step; the
    teacher is read only; ``stop`` is asked before each step (fedmekt.learn.deploy.Stopped).
    """
    h = cfg.hyper
    modalities = tuple(cfg.pair)
    source = inputs_only([proxy, labelled], modalities)
    params = [p for m in modalities for p in student.encoders[m].parameters()]
    opt = torch.optim.Adam(params, lr=h.lr_global)
    steps = 0
    while steps < budget:  # epochs of random crops until the budget is spent
        for xs, _labels in private_epoch(source, modalities, cfg, rng, device, budget - steps):
            check_stop(stop)
            loss = torch.zeros((), device=device)
            for m in modalities:
                with torch.no_grad():
                    target = teacher.encode(xs[m], m)[0]
                loss = loss + torch.nn.functional.mse_loss(student.encode(xs[m], m)[0], target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    dep = deploy(student, head, labelled, cfg, n_classes, device, deploy_seed, stop)
    return ClassModel(device_class, dep.model, dep.head, student.eval())
