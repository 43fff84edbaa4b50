"""How every onnxruntime session of the kit is configured: the gateway's recognizer and export's parity check
load a package's models alike, so a package verified at export runs the same way on a gateway."""

from __future__ import annotations

import onnxruntime as ort


def session_options(threads: int) -> ort.SessionOptions:
    """CPU options for batch-1 streaming: ``threads`` intra-op threads (1 wins at batch 1 on small devices)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts
