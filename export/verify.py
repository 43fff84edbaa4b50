"""Parity of an exported ONNX file against the PyTorch module it came from.

The acceptance bar: identical argmax labels at sequence lengths 1, 24, 128 and 2000 (2000 = the evaluation
chunk length, spec §5), and max |Δ| on the embedding within :func:`tolerance` of the length: 1e-4 up to 128
steps (a gateway's windows), 1e-2 beyond. Float32 rounding in an LSTM's recurrence grows with the length: over
2000 steps of real data ONNX and PyTorch differ by up to 1e-3 on ill-conditioned stretches (HAPT acce; 1.48e-4
on a gyro encoder failed a run's final package under the old flat 1e-4), where PyTorch fp32 itself is 6e-4
from float64 (bench/bench_inference.py). An export bug (gate order, lost state) errs by 0.1–1 at any length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.run_model import torch_classify
from export.runtime import session_options
from fedmekt.learn.model import EncoderClassifier

LENGTHS = (1, 24, 128, 2000)
TOLERANCE = 1e-4        # up to WINDOW_LENGTHS steps
LONG_TOLERANCE = 1e-2   # beyond: rounding accumulated over a long recurrence, far below an export bug's error
WINDOW_LENGTHS = 128


def tolerance(length: int) -> float:
    """The embedding's allowed max |ONNX − PyTorch| over ``length`` steps (module docstring)."""
    return TOLERANCE if length <= WINDOW_LENGTHS else LONG_TOLERANCE


class ParityError(RuntimeError):
    """The ONNX file does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ParityRow:
    length: int
    max_abs_embedding: float
    labels_equal: bool

    @property
    def ok(self) -> bool:
        return self.max_abs_embedding <= tolerance(self.length) and self.labels_equal


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session configured exactly as gateways configure theirs."""
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def parity(classifier: EncoderClassifier, onnx_path: Path, inputs: np.ndarray,
           lengths: tuple[int, ...] = LENGTHS) -> list[ParityRow]:
    """Compare ONNX and PyTorch on the first ``T`` steps of ``inputs`` [B, T_max, C] for each T in ``lengths``."""
    if inputs.shape[1] < max(lengths):
        raise ValueError(f"inputs have {inputs.shape[1]} steps, parity needs {max(lengths)}")
    sess = session(onnx_path)
    rows = []
    for t in lengths:
        x = np.ascontiguousarray(inputs[:, :t], dtype=np.float32)
        z_ort, logits_ort = sess.run(None, {"x": x})
        z_pt, logits_pt = torch_classify(classifier, x)
        rows.append(ParityRow(t, float(np.abs(z_ort - z_pt).max()),
                              bool(np.array_equal(logits_ort.argmax(-1), logits_pt.argmax(-1)))))
    return rows


def check_parity(classifier: EncoderClassifier, onnx_path: Path, inputs: np.ndarray,
                 lengths: tuple[int, ...] = LENGTHS) -> list[ParityRow]:
    """:func:`parity`, raising :class:`ParityError` naming the first failing length."""
    rows = parity(classifier, onnx_path, inputs, lengths)
    for row in rows:
        if not row.ok:
            raise ParityError(f"{Path(onnx_path).name}: T={row.length} max|Δembedding|={row.max_abs_embedding:.2e} "
                              f"labels_equal={row.labels_equal} (tolerance {tolerance(row.length):g})")
    return rows
