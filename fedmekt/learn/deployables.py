"""What the packages ship, derived from one state of the global model: the deployed model and, in a fleet of
several device classes, each class's model.

The aggregator builds the packages due before the last round on a worker thread while the rounds go on, from a
:class:`GlobalState` snapshot taken between rounds (deep copies: the worker never reads the model the round thread
trains); the final figures and package derive from the engine's own model through the very same code. Derived
models are computed once per completed round. A mixed fleet's students warm-start from the previous package's,
so the states must be passed in round order, none skipped, for the same cadence to give the same packages.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedmekt import device_classes
from fedmekt.learn.algorithms.base import to_numpy
from fedmekt.config import FederationConfig
from fedmekt.learn.class_models import ClassModel, distil_class_model
from fedmekt.learn.deploy import DeployedModel, Stop, deploy
from fedmekt.learn.model import LinearHead, SplitAutoencoder
from fedmekt.learn.slicing import sliced_state
from sensors.partition import Partition


@dataclass(frozen=True)
class GlobalState:
    """The global model and the federation's head after ``rounds_completed`` rounds (the engine's own, or a copy)."""

    model: SplitAutoencoder
    head: LinearHead
    rounds_completed: int

    def copy(self) -> "GlobalState":
        """Deep copies: a snapshot the next rounds' training leaves untouched."""
        return GlobalState(copy.deepcopy(self.model), copy.deepcopy(self.head), self.rounds_completed)


@dataclass
class DeploySource:
    """What deriving needs besides the global state (all read only): the server's data and recipe."""

    cfg: FederationConfig
    n_classes: int
    proxy: Partition
    labelled: Partition
    device: torch.device
    width_sliced: bool                                          # HeteroFL: a class ships its slice of the model
    build_model: Callable[[str], SplitAutoencoder]              # a class's seeded initial model, on ``device``
    class_rng: Callable[..., np.random.Generator]               # (class index[, round]): a student's draws
    deploy_seed: int


class Deployables:
    """The deployed model and each device class's model of a :class:`GlobalState`, each computed once per round."""

    def __init__(self, source: DeploySource) -> None:
        self.source = source
        self.reset()

    def reset(self) -> None:
        """Forget what was derived (a checkpoint loaded: another model, no package history)."""
        self._deployed: tuple[int, DeployedModel] | None = None
        self._class_models: tuple[int, dict[str, ClassModel]] | None = None

    def deployed(self, state: GlobalState, stop: Stop = None) -> DeployedModel:
        """The federation's encoders and head fine-tuned on the labelled set by ``hyper``'s deploy recipe
        (fedmekt/learn/deploy.py); ``stop`` may end it early (fedmekt.learn.deploy.Stopped, nothing kept)."""
        if self._deployed is None or self._deployed[0] != state.rounds_completed:
            s = self.source
            self._deployed = (state.rounds_completed, deploy(state.model, state.head, s.labelled, s.cfg, s.n_classes,
                                                             s.device, s.deploy_seed, stop))
        return self._deployed[1]

    def class_models(self, state: GlobalState, stop: Stop = None) -> dict[str, ClassModel]:
        """Each accepted device class's deployable encoders + head: the deployed model for the global model's own
        (widest) class, for each narrower class one distilled from the global encoders and deployed by the same
        recipe (fedmekt/learn/class_models.py), or under HeteroFL its slice of the global model deployed so.

        After the last round (the final figures and package) every student is distilled afresh, seeded by (seed,
        class): the same in every process, however many packages went out before. A package before that (the
        aggregator's ``--package-every``) warm-starts each student from the class's previous package and takes
        ``hyper.class_distil_warm_steps``, seeded by (seed, class, round): its distillation costs a fraction of a
        fresh one, and the same cadence gives the same packages. ``stop`` as for :meth:`deployed`."""
        if self._class_models is None or self._class_models[0] != state.rounds_completed:
            s = self.source
            h, top = s.cfg.hyper, device_classes.global_class(s.cfg.fleet)
            last = state.rounds_completed >= s.cfg.rounds
            previous = {} if last or self._class_models is None else self._class_models[1]
            made = {}
            for i, name in enumerate(s.cfg.device_classes):
                if name == top:
                    dep = self.deployed(state, stop)
                    made[name] = ClassModel(name, dep.model, dep.head)
                    continue
                if s.width_sliced:
                    made[name] = self._sliced_class_model(state, name, stop)
                    continue
                if name in previous:   # warm: from the class's previous package
                    student = copy.deepcopy(previous[name].distilled).train()
                    rng = s.class_rng(i, state.rounds_completed)
                    budget = h.class_distil_warm_steps
                else:
                    student, rng = s.build_model(name), s.class_rng(i)
                    budget = h.class_distil_steps
                made[name] = distil_class_model(name, state.model, state.head, student, s.proxy, s.labelled, s.cfg,
                                                rng, s.device, budget, s.n_classes, s.deploy_seed, stop)
            self._class_models = (state.rounds_completed, made)
        return self._class_models[1]

    def _sliced_class_model(self, state: GlobalState, device_class: str, stop: Stop) -> ClassModel:
        """HeteroFL: the class's slice of the global model, fine-tuned with the global head by the deploy recipe."""
        s = self.source
        student = s.build_model(device_class)
        wide = {k: to_numpy(v) for k, v in state.model.state_dict().items()}
        student.load_state_dict({k: torch.from_numpy(v) for k, v in sliced_state(wide, student.hidden).items()})
        dep = deploy(student, state.head, s.labelled, s.cfg, s.n_classes, s.device, s.deploy_seed, stop)
        return ClassModel(device_class, dep.model, dep.head)
