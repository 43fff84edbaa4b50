"""The inference-only install: ``pip install '.[infer]'`` in a fresh venv has no torch and runs ``fedmekt infer``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_client.inference import StreamingRecognizer
from export_support import REPO, built_package, signing_keys, trained_run

COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache")


@pytest.mark.slow
def test_infer_extra_installs_without_torch_and_runs(data_dir, tmp_path, tmp_path_factory):
    # a copy of the source tree, so pip's build leaves nothing in the shared working tree
    src = Path(shutil.copytree(REPO, tmp_path / "src", ignore=COPY_IGNORE))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)  # no --system-site-packages
    py, fedmekt = venv / "bin" / "python", venv / "bin" / "fedmekt"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[infer]"], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]

    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    assert subprocess.run([str(py), "-c", "import onnxruntime, cryptography, paho.mqtt"]).returncode == 0

    run = trained_run("hapt", data_dir, tmp_path_factory)
    package = built_package("hapt", data_dir, tmp_path_factory)
    rec = run.test[2]
    x, t = rec.modalities["acce"][:600], rec.timestamps[:600]
    csv = tmp_path / "samples.csv"
    csv.write_text("".join(f"{float(ti)!r}," + ",".join(repr(float(v)) for v in xi) + "\n" for ti, xi in zip(t, x)))
    public = signing_keys(tmp_path_factory)[1]
    proc = subprocess.run([str(fedmekt), "infer", "--model", str(package), "--source", f"csv:{csv}",
                           "--public-key", str(public)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    want = StreamingRecognizer.open(package, None, "acce").push(t, x)
    assert len(got) == len(want) > 0
    assert [d["label"] for d in got] == [p.label for p in want]
    assert [d["t"] for d in got] == pytest.approx([p.t for p in want])

    # exporting needs the training extras: said in one line, not a traceback
    export = subprocess.run([str(fedmekt), "export", "--run", str(run.run_dir), "--out", str(tmp_path / "o"),
                             "--key", str(public)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert export.returncode == 2 and "pip install 'fedmekt-edge[train]'" in export.stderr
