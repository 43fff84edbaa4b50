"""The paper's five algorithms and HeteroFL, issue 22's baseline (b) (``get_algorithm(name)``), and how this
implementation treats the spec's §10 list.

Fixed (always):

* B1 one split per seed (``sensors.splits.make_split``) shared by every party; test/proxy/labelled/clients
  are disjoint by unit. B5: the labelled set is held out from the client pool. B6: z-scores use client-pool
  statistics. B7/B8: handled by the sensors readers.
* B2 client embeddings are averaged per modality over the clients holding it (``fedmekt.learn.streaming``).
* B3 per round one set of proxy windows Π_t (start rows in the plan, fixed length ``window``) is used for the
  downstream knowledge, the client's KD, the upload and the server's distillation.
* B4 a fresh seeded client draw every round (``ServerEngine.plan_round``).
* O5/O6 every step clears gradients and steps exactly the named encoders/decoders (``ModuleOptimizers``).
* O8/O9 the paper's moving probe is kept (``f1_paper``) and a converged linear probe on the frozen final
  encoder is added, with macro F1, accuracy and the majority floor. O10: classes come from the label names.

Choices: O1–O3 (time-axis softmax, C-server KL direction, KD counted twice) only with ``faithful=True``;
default is a feature-axis softmax, the standard KD direction, each term once. O4: C keeps the fixed random
projections, rebuilt from the seed by every party, never trained. O7: FedProx/MOON terms as in the official
code.

Beyond the reference: the FedMEKT server also walks its whole proxy set (reconstruction only) in each
distillation epoch (``server_proxy_walk``, default on; docs/fedmekt-c-selection.md), since exchanging only
Π_t would otherwise shrink the global autoencoder's training to Π_t.
"""

from __future__ import annotations

from fedmekt.learn.algorithms.base import Algorithm
from fedmekt.learn.algorithms.fedmekt import FedMEKT
from fedmekt.learn.algorithms.heterofl import HeteroFL
from fedmekt.learn.algorithms.mmfl import MultimodalFedAvg

_FACTORIES = {
    "fedmekt-c": lambda: FedMEKT(joint=True),
    "fedmekt-s": lambda: FedMEKT(joint=False),
    "mmfedavg": lambda: MultimodalFedAvg(""),
    "mmfedprox": lambda: MultimodalFedAvg("prox"),
    "mmmoon": lambda: MultimodalFedAvg("moon"),
    "heterofl": HeteroFL,
}


def get_algorithm(name: str) -> Algorithm:
    return _FACTORIES[name]()
