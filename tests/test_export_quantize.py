"""int8 dynamic quantization: valid ONNX, smaller, and within the stated F1 change on the test set."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.onnx_export import export_classifier
from export.quantize import quantize_int8
from export.verify import session
from export_support import trained_run, weighted_f1

F1_TOLERANCE = 0.05  # absolute weighted-F1 change allowed vs fp32 on the held-out recordings


@pytest.mark.parametrize("modality", ["acce", "gyro"])
def test_int8_is_smaller_and_keeps_f1(modality, data_dir, tmp_path, tmp_path_factory):
    run = trained_run("hapt", data_dir, tmp_path_factory)
    fp32 = export_classifier(run.model.classifier(modality), 3, tmp_path / "fp32.onnx")
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx")
    model = onnx.load(str(int8))
    onnx.checker.check_model(model, full_check=True)
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node)
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size

    x, y = run.test_windows(modality)
    f1 = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        logits = session(path).run(["logits"], {"x": x})[0][:, -1]
        f1[name] = weighted_f1(y, logits.argmax(-1))
    majority = weighted_f1(y, np.full_like(y, np.bincount(y).argmax()))
    assert f1["fp32"] > majority + 0.1  # the model has learnt something, so the comparison means something
    assert abs(f1["int8"] - f1["fp32"]) <= F1_TOLERANCE, f1
