"""Registry of the five algorithms: ``get_algorithm(name)``."""

from __future__ import annotations

from fedmekt.algorithms.base import Algorithm
from fedmekt.algorithms.fedmekt import FedMEKT
from fedmekt.algorithms.mmfl import MultimodalFedAvg

_FACTORIES = {
    "fedmekt-c": lambda: FedMEKT(joint=True),
    "fedmekt-s": lambda: FedMEKT(joint=False),
    "mmfedavg": lambda: MultimodalFedAvg(""),
    "mmfedprox": lambda: MultimodalFedAvg("prox"),
    "mmmoon": lambda: MultimodalFedAvg("moon"),
}


def get_algorithm(name: str) -> Algorithm:
    return _FACTORIES[name]()
