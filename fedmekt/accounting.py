"""Communication accounting from the real serialized message sizes.

A message's size is what ``fedmekt.wire.codec.encoded_size`` returns: every MQTT payload (frame prefix,
JSON header, safetensors body, chunked at 256 KiB) for those tensors cast to the wire dtype — the same
bytes the deployment publishes (MQTT's own ~50 B per-packet framing excluded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmekt.wire.codec import encoded_size
from sensors.partition import Partition

Tensors = dict[str, np.ndarray]


def message_bytes(tensors: Tensors, dtype: str, kind: str = "upload") -> int:
    """Bytes on the wire for ``tensors`` cast to ``dtype`` (0 for an empty message)."""
    return encoded_size(tensors, dtype, kind=kind) if tensors else 0


def proxy_bytes(proxy: Partition, modalities, dtype: str) -> int:
    """One-off cost of distributing the proxy set (the modalities a client holds) to one client."""
    return message_bytes({m: proxy.modalities[m] for m in modalities}, dtype, kind="proxy")


@dataclass
class Ledger:
    """Bytes per round: sent by the server (down) and by clients (up)."""

    down: list[int] = field(default_factory=list)
    up: list[int] = field(default_factory=list)

    def record(self, down: int, up: int) -> None:
        self.down.append(down)
        self.up.append(up)
