"""The aggregator's side of device classes (fedmekt/device_classes.py): who may join, and per-class packages.

A training gateway declares its class in its status; one the federation does not accept is never selected
(warned about once, in one line), and every accepted class's uploads are folded alike: FedMEKT's share the shape
[W, T, r] whatever the class's width; HeteroFL's are checked against the declared class's slice
(``Presence.classes``, ``ServerEngine.expected_upload``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from fedmekt import device_classes
from fedmekt.config import FederationConfig
from fedmekt.wire.manifest import Status

if TYPE_CHECKING:
    from export.run_model import RunModel
    from fedmekt.learn.class_models import ClassModel
    from fedmekt.run_info import RunInfo

log = logging.getLogger("aggregator")


class ClassGate:
    """Refuses a status that declares a class the federation does not accept (one warning line per client)."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self._warned: set[str] = set()

    def refused(self, client_id: str, status: Status) -> bool:
        if status.state != "online" or not status.modalities:
            return False  # offline, or an inference-only gateway: it trains nothing
        fleet = self.cfg.fleet
        why = device_classes.refusal(fleet, self.cfg.federation, device_classes.resolve(fleet, status.device_class))
        if why is not None and client_id not in self._warned:
            self._warned.add(client_id)
            log.warning("ignoring %s: %s", client_id, why)
        return why is not None


class ClassPackages:
    """A mixed fleet's packages: one signed package per accepted device class, each under ``models/<class>/``.

    The widest class ships the global model's deployed one; each narrower one the encoder distilled for it
    (fedmekt/learn/deployables.py, :func:`class_runs`). Same interface as
    :class:`export.publisher.PackagePublisher`, by class: the aggregator publishes every class when due and
    re-sends :meth:`newest` (a sync answer: the asking gateway's class's package; a reconnect: every class's).
    """

    def __init__(self, classes: tuple[str, ...], link, federation: str, key, out_root, every: int, run: str) -> None:
        from export.publisher import PackagePublisher

        self.publishers = {c: PackagePublisher(link, federation, key, out_root=out_root / c, every=every, int8=False,
                                               run=run, device_class=c, namespace=c)
                           for c in classes}

    def due(self, round_: int, final: bool) -> bool:
        return any(p.due(round_, final) for p in self.publishers.values())

    def maybe_publish(self, runs: dict[str, RunModel], round_: int, final: bool = False) -> None:
        """``runs``: each class's package content (:func:`class_runs`); every class is published when due."""
        for name, run in runs.items():
            self.publishers[name].maybe_publish(run, round_, final=final)

    def newest(self) -> dict[str, object]:
        """Each class's newest package (export.build.BuiltPackage), by class: the namespace it went out under."""
        return {c: p.built for c, p in self.publishers.items() if p.built is not None}


def class_runs(info: RunInfo, class_models: dict[str, ClassModel]) -> dict[str, RunModel]:
    """Each class's package content from its deployable model: the run's ``info`` with the class's width."""
    from export.run_model import RunModel

    return {name: RunModel(dataclasses.replace(info, hidden=cm.model.hidden), cm.model, cm.head)
            for name, cm in class_models.items()}


def package_publisher(cfg: FederationConfig, link, key, out_root, every: int, run: str):
    """The aggregator's publisher: one package of the fleet's class, or a mixed fleet's one per class."""
    if len(cfg.device_classes) > 1:
        return ClassPackages(tuple(cfg.device_classes), link, cfg.federation, key, out_root, every, run)
    from export.publisher import PackagePublisher

    return PackagePublisher(link, cfg.federation, key, out_root=out_root, every=every, int8=False, run=run,
                            device_class=cfg.device_classes[0])
