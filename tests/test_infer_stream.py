"""Streaming recognition with onnxruntime: same labels as PyTorch on a replayed recording, and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_client.inference import StreamingRecognizer
from export.package import load_public_key
from export.run_model import torch_classify
from export_support import REPO, WINDOW, built_package, signing_keys, trained_run
from fedmekt_cli.main import main
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from sensors.sources import ReplaySource


def expected_predictions(run, rec, modality: str, stride: int, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch labels and timestamps of every full window of (the first ``rows`` of) one recording (last-step argmax)."""
    x = run.normalised(rec, modality)[:rows]
    starts = np.arange(0, len(x) - WINDOW + 1, stride)
    windows = np.stack([x[s:s + WINDOW] for s in starts])
    _, logits = torch_classify(run.model.classifier(modality), windows)
    return logits[:, -1].argmax(-1), rec.timestamps[starts + WINDOW - 1]


@pytest.mark.parametrize("dataset,modality", [("hapt", "acce"), ("hapt", "gyro"), ("ur_fall", "depth")])
def test_replay_gives_pytorch_labels(dataset, modality, data_dir, tmp_path_factory):
    run = trained_run(dataset, data_dir, tmp_path_factory)
    package = built_package(dataset, data_dir, tmp_path_factory)
    recognizer = StreamingRecognizer.open(package, load_public_key(signing_keys(tmp_path_factory)[1]), modality)
    recs = run.test[:3]
    with ReplaySource(recs, speed=None, modalities=[modality]) as source:
        got = list(recognizer.run(source))
    want_idx, want_t = zip(*(expected_predictions(run, r, modality, recognizer.stride) for r in recs))
    want_idx, want_t = np.concatenate(want_idx), np.concatenate(want_t)
    assert len(got) == len(want_idx) > 0
    np.testing.assert_array_equal([p.index for p in got], want_idx)
    np.testing.assert_allclose([p.t for p in got], want_t)
    assert [p.label for p in got] == [run.model.info.label_names[i] for i in want_idx]
    assert all(0 < p.confidence <= 1 for p in got)


def test_batch_boundaries_do_not_change_predictions(data_dir, tmp_path_factory):
    run = trained_run("hapt", data_dir, tmp_path_factory)
    package = built_package("hapt", data_dir, tmp_path_factory)
    rec = run.test[0]
    x, t = rec.modalities["acce"][:2000], rec.timestamps[:2000]
    whole = StreamingRecognizer.open(package, None, "acce", stride=7).push(t, x)
    pieces = StreamingRecognizer.open(package, None, "acce", stride=7)
    cuts = np.sort(np.random.default_rng(0).choice(np.arange(1, 2000), 60, replace=False))
    got = [p for a, b in zip([0, *cuts], [*cuts, 2000]) for p in pieces.push(t[a:b], x[a:b])]
    assert got == whole and len(got) == (2000 - WINDOW) // 7 + 1


def write_csv(path: Path, rec, modality: str, rows: int) -> Path:
    x, t = rec.modalities[modality][:rows], rec.timestamps[:rows]
    path.write_text("".join(f"{float(ti)!r}," + ",".join(repr(float(v)) for v in xi) + "\n" for ti, xi in zip(t, x)))
    return path


def test_cli_csv_source_json_lines(data_dir, tmp_path, tmp_path_factory, capsys):
    run = trained_run("hapt", data_dir, tmp_path_factory)
    package = built_package("hapt", data_dir, tmp_path_factory)
    csv = write_csv(tmp_path / "walk.csv", run.test[1], "gyro", 400)
    public = signing_keys(tmp_path_factory)[1]
    assert main(["infer", "--model", str(package), "--source", f"csv:{csv}", "--modality", "gyro",
                 "--public-key", str(public)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want_idx, want_t = expected_predictions(run, run.test[1], "gyro", stride=16, rows=400)
    assert [set(d) for d in lines] == [{"t", "label", "confidence"}] * len(want_idx)
    assert [d["label"] for d in lines] == [run.model.info.label_names[i] for i in want_idx]
    np.testing.assert_allclose([d["t"] for d in lines], want_t)


def test_cli_refuses_a_tampered_package(data_dir, tmp_path, tmp_path_factory, capsys):
    package = Path(shutil.copytree(built_package("hapt", data_dir, tmp_path_factory), tmp_path / "pkg"))
    (package / "acce.onnx").write_bytes((package / "acce.onnx").read_bytes()[:-10])
    code = main(["infer", "--model", str(package), "--source", "replay:demo",
                 "--public-key", str(signing_keys(tmp_path_factory)[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("fedmekt infer: error: refused model package") and "truncated" in err[-1]


@pytest.mark.broker
def test_cli_publishes_predictions_over_mqtt(mosquitto, data_dir, tmp_path_factory, capsys):
    package = built_package("hapt", data_dir, tmp_path_factory)
    topic = "fedmekt/test-hapt/clients/c007/inference"
    with MqttLink(mosquitto.url, LinkOptions(client_id="watcher"), subscriptions=[topic]).connect() as watcher:
        assert main(["infer", "--model", str(package), "--source", "replay:demo", "--max-windows", "5",
                     "--mqtt", mosquitto.url, "--client-id", "c007"]) == 0
        out = capsys.readouterr().out.splitlines()
        got, deadline = [], time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            msg = watcher.get(timeout=0.2)
            if msg is not None:
                got.append(msg.payload.decode())
    assert len(out) == 5 and got == out


def test_infer_path_never_imports_torch(data_dir, tmp_path_factory):
    package = built_package("hapt", data_dir, tmp_path_factory)
    code = ("import sys; from fedmekt_cli.main import main; "
            f"rc = main(['infer', '--model', {str(package)!r}, '--source', 'replay:demo', '--max-windows', '3']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3


def test_cli_runs_from_a_gateway_model_store(data_dir, tmp_path, tmp_path_factory, capsys):
    from export.install import ModelStore

    public = signing_keys(tmp_path_factory)[1]
    store = ModelStore(tmp_path / "models", load_public_key(public))
    store.install(built_package("hapt", data_dir, tmp_path_factory))
    assert main(["infer", "--model", str(store.root), "--source", "replay:demo", "--max-windows", "2",
                 "--public-key", str(public)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    (store.root / "current").write_text("../../elsewhere\n")
    assert main(["infer", "--model", str(store.root), "--source", "replay:demo"]) == 2
    assert "does not name an installed package" in capsys.readouterr().err


def test_cli_csv_with_other_fields_is_an_error_naming_the_file_and_the_way_out(data_dir, tmp_path, tmp_path_factory,
                                                                               capsys):
    """A CSV in the kit's generic format (every modality's columns) is not a stream of one modality: exit 2."""
    package = built_package("hapt", data_dir, tmp_path_factory)
    rows = np.random.default_rng(0).normal(size=(50, 7))
    path = tmp_path / "run1.csv"
    path.write_text("".join(f"{i * 0.02:.2f}," + ",".join(f"{v:.4f}" for v in r) + "\n" for i, r in enumerate(rows)))
    code = main(["infer", "--model", str(package), "--source", f"csv:{path}", "--modality", "gyro",
                 "--public-key", str(signing_keys(tmp_path_factory)[1])])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and captured.out == ""
    assert err[-1].startswith(f"fedmekt infer: error: no sample of csv:{path} could be read: 50 malformed")
    assert "replay:DATASET" in err[-1]
    from edge_client.sources import open_source

    with open_source(f"csv:{path}", "infer", {"gyro": 3}, None).source as source:   # its log lines say csv:run1
        assert (source.name, source.unit) == ("csv", "run1")


def test_missing_public_key_warning_follows_log_json(data_dir, tmp_path_factory):
    package = built_package("hapt", data_dir, tmp_path_factory)
    done = subprocess.run([sys.executable, "-m", "fedmekt_cli", "--log-json", "infer", "--model", str(package),
                           "--source", "replay:demo", "--max-windows", "1"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stderr.splitlines()]   # every stderr line is a JSON record
    assert any(r["level"] == "WARNING" and "signature is NOT checked" in r["message"] for r in records)
