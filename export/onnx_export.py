"""Export one modality's encoder + generalized head to ONNX with dynamic batch and time axes.

Exporter choice (checked on torch 2.13, see tests/test_export_onnx.py and ecosystem.md §7):
the TorchScript exporter (``dynamo=False`` + ``dynamic_axes``) gives an LSTM graph that matches
PyTorch at every sequence length, while the dynamo exporter freezes the time axis for
this LSTM encoder and fails at run time on lengths other than the example's. Hence
``dynamo=False`` is pinned here and covered by the parity tests at T = 1, 24, 128, 2000.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch

from fedmekt.artifacts import atomic_write_bytes
from fedmekt.learn.model import EncoderClassifier

OPSET = 17
INPUT = "x"
OUTPUTS = ("embedding", "logits")
DYNAMIC_AXES = {INPUT: {0: "batch", 1: "time"}, "embedding": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}


def export_classifier(classifier: EncoderClassifier, channels: int, path: Path, *, opset: int = OPSET,
                      doc: str = "") -> Path:
    """Write ``classifier`` as ONNX (input ``x`` [B, T, C] → ``embedding`` [B, T, r], ``logits`` [B, T, K]).

    The file is checked with ``onnx.checker`` (full check, shapes inferred) before it is
    written atomically. LSTM initial states are implicit zeros, as in training/evaluation.
    """
    classifier = classifier.eval().cpu()
    example = torch.zeros(2, 7, channels, dtype=torch.float32)  # B, T ≠ 1 so no axis gets specialised
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch-size warning for LSTM (h0/c0 implicit) and deprecations
        torch.onnx.export(
            classifier, (example,), buf, dynamo=False, opset_version=opset,
            input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=DYNAMIC_AXES,
        )
    model = onnx.load_from_string(buf.getvalue())
    if doc:
        model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(Path(path), model.SerializeToString())
    return Path(path)
