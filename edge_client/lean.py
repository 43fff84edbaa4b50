"""A training gateway's process made lean: two process-wide settings that take about 120 MiB off its peak RSS.

* glibc's malloc raises its mmap threshold to the largest block freed (up to 32 MiB), so from the second
  round on a round's large tensors come from the heap and stay there: the process keeps its largest round
  transient and grows with it. A fixed threshold (128 KiB, glibc's starting value) keeps large blocks in
  mmap, returned to the system when freed. (``mallopt`` at run time: the ``MALLOC_*`` variables are read
  only when the process starts.)
* ``torch.optim`` imports ``torch._dynamo`` when an optimizer is built and on every step (for a graph break
  and a "don't compile this" wrapper); with it come ``torch.fx`` and sympy, about 60 MiB of RSS that a
  gateway which never compiles doesn't use. A stand-in module provides those two functions as the no-ops they
  are in eager mode, so training is bit-identical (tests/test_gateway_lean.py).

Measured with ``bench/bench_gateway.py`` (docs/results.md). Only for a process that trains and never
compiles or exports a model — ``fedmekt client``; the in-process simulation, which exports ONNX beside its
clients, does not call it.
"""

from __future__ import annotations

import ctypes
import sys
import types

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024


def lean_process() -> dict[str, bool]:
    """Apply both settings (before torch trains anything); which ones took effect."""
    return {"mmap_threshold": fixed_mmap_threshold(), "no_dynamo": without_dynamo()}


def fixed_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """glibc: a fixed mmap threshold (disables its dynamic raise); False where there is no glibc ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # macOS, Windows
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def without_dynamo() -> bool:
    """Stand in for ``torch._dynamo`` unless it is loaded already; True when the stand-in is installed."""
    if "torch._dynamo" in sys.modules:
        return False
    try:
        import torch
    except ImportError:  # an inference-only install: nothing to stand in for
        return False

    stub = types.ModuleType("torch._dynamo", "fedmekt's eager-only stand-in for torch._dynamo (edge_client.lean)")
    stub.graph_break = _graph_break
    stub.disable = _disable
    stub.__getattr__ = _missing
    sys.modules["torch._dynamo"] = stub
    torch._dynamo = stub
    return True


def _graph_break() -> None:
    """Outside ``torch.compile`` a graph break does nothing."""


def _disable(fn=None, recursive: bool = True, *, wrapping: bool = True, reason: str | None = None):
    """Outside ``torch.compile`` "don't compile ``fn``" is ``fn`` itself."""
    if fn is None:
        return lambda f: f
    return fn


def _missing(name: str):
    raise AttributeError(f"torch._dynamo.{name} is not available in a lean gateway process (edge_client.lean)")
