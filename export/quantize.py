"""Optional int8 dynamic quantization of an exported encoder (weights int8, activations quantized at run time).

onnxruntime maps the LSTM nodes to DynamicQuantizeLSTM and MatMul to MatMulInteger; the
per-step Linear head exported as MatMul+Add shrinks too. Treat it as a size optimisation:
at these model sizes it is not faster (ecosystem.md §3.4), and its accuracy cost is
measured by tests/test_export_quantize.py and bench/bench_inference.py.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from fedmekt.artifacts import atomic_write_bytes


def quantize_int8(src: Path, dst: Path) -> Path:
    """Write the int8 dynamic-quantized version of ``src`` to ``dst`` (checked with onnx.checker)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        level = logging.getLogger().level
        logging.getLogger().setLevel(max(level, logging.ERROR))  # its "consider pre-processing" hint is noise here
        try:
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(level)
        model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(Path(dst), model.SerializeToString())
    return Path(dst)
