"""What a deployment's round rows share with the in-process run's: everything but the transport's record."""

from __future__ import annotations

# keys that legitimately differ between the two transports: timing, header bytes, transport counters, the
# deployment's selection record (backoff) and its run id on the wire (an in-process run has none)
TRANSPORT_KEYS = {"wall_s", "bytes_up", "bytes_down", "bytes_global", "bytes_proxy_once", "rejected", "late",
                  "missed", "benched", "backoff", "federation_run"}


def learning(row: dict) -> dict:
    """The row without its transport keys: equal, bit for bit, between a deployment and the in-process run."""
    return {k: v for k, v in row.items() if k not in TRANSPORT_KEYS}
