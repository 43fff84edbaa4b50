"""What ``fedmekt simulate`` (the demo) ends with: the result beside the raw-feature probe and the majority floor,
each F1 named, and a paper metric that says over how many rounds its median runs when a run has fewer than 10."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from core_support import quick_hyper_config
from fedmekt.observe.report import paper_metric_label

pytestmark = pytest.mark.broker
SCRIPT = Path(sys.executable).with_name("fedmekt")


def test_paper_metric_label_names_the_rounds_its_median_spans():
    assert paper_metric_label([10, 10]) == "paper metric (median of last 10 rounds)"
    assert paper_metric_label([4, 0]) == "paper metric (median of last 4 rounds)"   # 0: a reference row
    assert paper_metric_label([1]) == "paper metric (last round)"
    assert paper_metric_label([3, 10]) == "paper metric (median of last 3–10 rounds)"


@pytest.mark.slow  # a whole simulate with its reference rows: about a minute
def test_short_simulation_summary_sets_the_result_beside_raw_features_and_floor(tmp_path):
    out = tmp_path / "sim"
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    done = subprocess.run(cmd + ["simulate", "--rounds", "3", "--clients", "1,1,1", "--per-round", "3",
                                 "--proxy-windows", "8", "--config", str(quick_hyper_config(tmp_path)),
                                 "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = ("deployed model, the encoder and head its packages ship",
              "final probe weighted F1, converged head on the final encoder",
              "paper metric (median of last 3 rounds), per-round probe",
              "raw-feature probe, the same head on unencoded samples", "majority-class floor")
    for label in labels:
        row = next((line for line in done.stdout.splitlines() if line.strip().startswith(label)), None)
        assert row is not None, f"{label!r} missing from\n{done.stdout}"
        acce, gyro = (float(v) for v in row[len(label) + 2:].split())   # one figure per test modality
        assert 0 <= acce <= 1 and 0 <= gyro <= 1
    assert "weighted F1 on the test subjects" in done.stdout
    assert "paper metric (median of last 3 rounds), ours" in (out / "results.md").read_text()
    (row, *_) = csv.DictReader((out / "results.csv").open())
    assert row["paper_metric_rounds"] == "3" and 0 <= float(row["deployed_f1_weighted_mean"]) <= 1
    assert (out / "report.html").stat().st_size > 10_000
