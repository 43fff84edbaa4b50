"""Communication accounting from the real serialized message sizes.

A message's size is what ``fedmekt.wire.codec.encoded_size`` returns: every MQTT payload (frame prefix,
JSON header, safetensors body, chunked at 256 KiB) for those tensors cast to the wire dtype — the same
bytes the deployment publishes (MQTT's own ~50 B per-packet framing excluded).
"""

from __future__ import annotations

import numpy as np

from fedmekt.wire.codec import encoded_size
from sensors.partition import Partition

Tensors = dict[str, np.ndarray]


def message_bytes(tensors: Tensors, dtype: str, kind: str = "upload") -> int:
    """Bytes on the wire for ``tensors`` cast to ``dtype`` (0 for an empty message)."""
    return encoded_size(tensors, dtype, kind=kind) if tensors else 0


def proxy_once_bytes(cfg, proxy: Partition, n_clients: int) -> int:
    """One-off cost of the proxy set as the deployment sends it (both modalities, float32, to every client);
    0 for the parameter baselines and under ``proxy_delivery`` "round" (Π_t travels in each round's views)."""
    if cfg.proxy_delivery_for(len(proxy)) != "once":
        return 0
    return n_clients * message_bytes({m: proxy.modalities[m] for m in cfg.pair}, "float32", kind="proxy")


def client_message_bytes(cfg, channels: dict[str, int], modalities: tuple[str, ...]) -> int:
    """Wire bytes of one upload (= one downstream view) of a client holding ``modalities`` under ``cfg``.

    Computed from the message shapes alone (zeros of the right shapes through the real encoder), so the
    measured options (layers, wire dtype, proxy windows) can be compared without training.
    """
    import torch

    from fedmekt.learn.algorithms import get_algorithm
    from fedmekt.learn.algorithms.base import Party
    from fedmekt.learn.engine import build_model

    party = Party(cfg, build_model(cfg, channels), None, None, torch.device("cpu"), tuple(modalities))
    spec = get_algorithm(cfg.algorithm).upload_spec(party, tuple(modalities), cfg.proxy_windows)
    return message_bytes({k: np.zeros(shape, np.float32) for k, shape in spec.items()}, cfg.wire_format)
