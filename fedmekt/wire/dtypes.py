"""Wire dtypes, and the float32 values a receiver gets back from each.

``float32`` and ``float16`` are plain casts. ``int8`` is symmetric linear quantisation with one float32 scale per
channel (the last axis): the scales travel beside the codes (``SCALE_SUFFIX``), so a tensor costs a quarter of its
float32 bytes plus 4 bytes per channel. It is for FedMEKT's embeddings and proxy windows, where validation showed
no loss from the 254-step grid (docs/fedmekt-c-selection.md); parameter averaging keeps a float dtype
(``FederationConfig.validate``).

The codec and the in-process runs both go through :func:`quantize` / :func:`dequantize`, so an in-process run sees
exactly the values the broker would have carried (``wire_cast``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

WIRE_DTYPES = ("float32", "float16", "int8")
ITEMSIZE = {d: np.dtype(d).itemsize for d in WIRE_DTYPES}   # bytes per value on the wire (int8: scales aside)
SCALE_SUFFIX = ":scale"   # body tensor holding the per-channel scales of an int8 tensor
INT8_MAX = 127            # codes lie in [-127, 127]: zero is exact and the range is symmetric


def channels(shape: tuple[int, ...]) -> int:
    """Channels of a tensor of ``shape``: its last axis (1 for a scalar)."""
    return shape[-1] if shape else 1


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and float32 per-channel scales of a finite float tensor: ``x ≈ codes * scales``."""
    a = np.asarray(x, dtype=np.float32)
    flat = a.reshape(-1, channels(a.shape))
    amax = np.abs(flat).max(axis=0) if flat.size else np.zeros(flat.shape[1], np.float32)
    scales = (amax / np.float32(INT8_MAX)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    codes = np.clip(np.rint(flat / safe), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes.reshape(a.shape), scales


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 values of int8 ``codes`` with per-channel ``scales`` (the receiver's side of :func:`quantize`)."""
    return (codes.astype(np.float32) * scales.astype(np.float32)).astype(np.float32, copy=False)


def wire_cast(tensors: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """What the receiver of ``tensors`` sent in ``dtype`` gets, as float32 (a copy-free identity for float32)."""
    if dtype == "float32":
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    if dtype == "int8":
        return {k: dequantize(*quantize(v)) for k, v in tensors.items()}
    return {k: np.asarray(v, dtype=dtype).astype(np.float32) for k, v in tensors.items()}
