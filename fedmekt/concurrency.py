"""One lock for the process-global torch RNG.

The engines build their initial models, fixed projections and heads under ``torch.random.fork_rng`` +
``manual_seed`` (global CPU generator). Two threads constructing at the same moment in one process
(``fedmekt simulate`` runs the aggregator and every client as threads; the aggregator builds its model
packages on a worker thread while the rounds go on) would interleave their draws and start from other weights
than the in-process run. Every seeded construction therefore goes through :func:`seeded_torch`, which holds this
lock for the construction only (never for training: that would stall the other threads); nothing of ours draws
from the global generator outside such a section, so separate sections need no ordering between them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

TORCH_RNG_LOCK = threading.RLock()


@contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """The global torch RNG forked and seeded with ``seed`` for the block (restored after), under the lock: keep
    the block to the seeded construction."""
    with TORCH_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
