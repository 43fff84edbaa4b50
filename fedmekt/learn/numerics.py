"""The numeric environment a run's figures were computed in (recorded in every final record).

A trained row is deterministic for one code state AND one arithmetic. Another CPU kernel path (MKL or oneDNN at
AVX2 instead of AVX-512), another thread count or a GPU rounds differently, and a small model trained for
thousands of steps turns that rounding into another result: UR Fall's labelled-only row moved by up to 0.14 on
one seed and 0.05 on a 5-seed mean with the same code (docs/results.md). Records carry the environment so that a
table never compares two environments' figures without saying so (``fedmekt.observe.report``).
"""

from __future__ import annotations

import os

import torch

ISA_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")   # pin a kernel path


def numeric_environment(device: torch.device) -> str:
    """One line naming what decides the arithmetic, e.g. ``torch 2.13.0+cpu, cpu AVX512, 1 thread``."""
    if device.type == "cuda":
        where = f"cuda {torch.cuda.get_device_name(device)}"
    else:
        where = f"cpu {torch.backends.cpu.get_cpu_capability()}"
    threads = torch.get_num_threads()
    pinned = [f"{k}={os.environ[k]}" for k in ISA_VARIABLES if os.environ.get(k)]
    return ", ".join([f"torch {torch.__version__}", where, f"{threads} thread{'s' if threads != 1 else ''}",
                      *pinned])
