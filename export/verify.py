"""Parity of an exported ONNX file against the PyTorch module it came from.

The acceptance bar (issue #5): max |Δ| ≤ 1e-4 on the embedding and identical argmax labels
at sequence lengths 1, 24, 128 and 2000 (2000 = the evaluation chunk length, spec §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_client.inference import session_options
from export.run_model import torch_classify
from fedmekt.model import EncoderClassifier

LENGTHS = (1, 24, 128, 2000)
TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The ONNX file does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ParityRow:
    length: int
    max_abs_embedding: float
    labels_equal: bool

    @property
    def ok(self) -> bool:
        return self.max_abs_embedding <= TOLERANCE and self.labels_equal


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
                              f"labels_equal={row.labels_equal} (tolerance {TOLERANCE:g})")
    return rows
