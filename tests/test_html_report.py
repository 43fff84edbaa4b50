"""``fedmekt report`` writes a self-contained report.html whose embedded PNGs are real images.

The run folder comes from a real (tiny) in-process federation on the bundled demo data.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from run_folder_support import make_run_folder

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return make_run_folder(tmp_path_factory.mktemp("run"))


def _report(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmekt_cli", "report", str(run_dir)], capture_output=True, text=True,
                          timeout=120)


def _images(page: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(data)
            for alt, data in re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)}


def test_report_html_embeds_every_plot_and_the_results_table(run_folder: Path):
    done = _report(run_folder)
    assert done.returncode == 0, done.stderr[-2000:]
    path = run_folder / "report.html"
    assert f"report: {path}" in done.stdout
    page = path.read_text()
    images = _images(page)
    assert set(images) == {"F1 per round", "Bytes per round", "F1 against bytes", "Per-client participation",
                           "Final probe: confusion matrix"}
    for alt, png in images.items():
        assert png.startswith(PNG) and len(png) > 5000, alt   # a real, non-trivial image
    assert "src=\"http" not in page and "<script" not in page     # self-contained, nothing fetched
    assert "<table>" in page and "fedmekt-c[W8]" in page and "majority floor" in page
    assert "3 of 3 rounds" in page                                 # the overview counts rounds as the progress bar
    assert "deployed model weighted F1 acce" in page and "<th>deployed F1</th>" in page
    assert "star at the last round is the deployed model" in page and "whole test set" in page
    assert page.count("<th>") <= 12 and "_mean" not in page    # readable headings, not the CSV's columns


def test_f1_plot_marks_the_deployed_model_beside_the_per_round_curve(run_folder: Path):
    """The F1 panel carries the deployed model's figure (a star; the caption names its metric): the picture changes
    when the run's finals lose it."""
    from fedmekt.observe.html_report import f1_figure, load_run_folder

    folder = load_run_folder(run_folder)
    assert any(k.startswith("deployed_f1_weighted_") for f in folder.finals for k in f)
    without = dataclasses.replace(folder, finals=[{k: v for k, v in f.items() if not k.startswith("deployed_")}
                                                  for f in folder.finals])
    assert f1_figure(folder) != f1_figure(without)


def test_final_probe_confusion_matrix_is_in_final_jsonl(run_folder: Path):
    finals = [json.loads(x) for x in (run_folder / "final.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (run_folder / "metrics.jsonl").read_text().splitlines()]
    for f in finals:
        for m in ("acce", "gyro"):
            cm = f[f"confusion_{m}"]
            assert len(cm) == len(cm[0]) and sum(map(sum, cm)) > 0
            diag = sum(cm[i][i] for i in range(len(cm)))
            assert diag / sum(map(sum, cm)) == pytest.approx(f[f"probe_accuracy_{m}"])
    assert all(len(r["participants"]) == r["absorbed"] for r in rows)


def test_partial_run_without_final_probe_still_gets_a_report(run_folder: Path, tmp_path: Path):
    (tmp_path / "metrics.jsonl").write_text((run_folder / "metrics.jsonl").read_text())
    done = _report(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    page = (tmp_path / "report.html").read_text()
    assert "not finished" in page and set(_images(page)) == {"F1 per round", "Bytes per round",
                                                             "Per-client participation"}
    assert not (tmp_path / "results.md").exists()


def test_report_of_an_empty_metrics_file_is_one_line_error(tmp_path: Path):
    (tmp_path / "metrics.jsonl").write_text("")
    done = _report(tmp_path)
    assert done.returncode == 2 and "holds no rounds" in done.stderr and "Traceback" not in done.stderr
