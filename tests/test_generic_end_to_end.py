"""A dataset of your own (the generic format at 100 Hz) through every command, as a new user would run them.

inspect and split find it by its descriptor; reproduce, simulate, the aggregator and clients fed
from ``split:`` record its name and rate in every run.json; export packages that run and infer
runs the package on a replay of the same files. Bad labels end in one clear error line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core_support import QUICK_HYPER_TOML
from export.package import load_public_key, verify_package
from federation_harness import ProcessFederation
from fedmekt_cli.main import main
from generic_support import LABELS, NAME, write_generic
from test_bad_input_cli import assert_one_clear_error, fedmekt

REPO = Path(__file__).resolve().parents[1]
RATE = 100.0
SMALL = "hidden = 8\n[hyper]\nclassifier_epochs = 1\nlocal_epochs = 1\nprobe_max_iter = 20\ndeploy_rounds = 2\n"
SHORT = ["--seeds", "1", "--rounds", "1", "--algorithms", "fedmekt-c", "--clients", "1,1,1", "--per-round", "3",
         "--no-progress"]


@pytest.fixture(scope="module")
def wristband(tmp_path_factory) -> Path:
    """6 subjects × 30 s at 100 Hz, in ROOT/wristband (ROOT is a data root holding it)."""
    return write_generic(tmp_path_factory.mktemp("data") / NAME)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(f"proxy_windows = 6\n{SMALL}")
    return path


@pytest.fixture(scope="module")
def reproduced(wristband, tiny, tmp_path_factory) -> Path:
    """``fedmekt reproduce --data-dir DIR`` (no --dataset) for one round: its output folder."""
    out = tmp_path_factory.mktemp("repro")
    assert main(["reproduce", "--data-dir", str(wristband), "--config", str(tiny), "--out", str(out), *SHORT]) == 0
    return out


def _run(out: Path) -> Path:
    """The one run's model folder: reproduce names it by variant and seed, a deployment by the run's folder."""
    (run,) = (out / "runs").iterdir()
    return run


def _run_info(out: Path) -> dict:
    return json.loads((_run(out) / "run.json").read_text())


def test_inspect_and_split_find_it_by_its_descriptor(wristband, tmp_path, capsys):
    assert main(["data", "inspect", "--data-dir", str(wristband), "--json"]) == 0  # no name needed
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == NAME and info["rate_hz"] == [RATE] and info["rows"] == 6 * 3000
    assert set(info["labels"]) == set(LABELS) and sum(info["labels"].values()) == info["rows"]
    for name, where in ((NAME, wristband.parent), ("generic", wristband)):  # by its name in a root, or as generic
        assert main(["data", "inspect", name, "--data-dir", str(where), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["dataset"] == NAME
    assert main(["data", "split", "--data-dir", str(wristband), "--out", str(tmp_path / "split.json")]) == 0
    manifest = json.loads((tmp_path / "split.json").read_text())
    assert (manifest["dataset"], manifest["rate_hz"], manifest["pair"]) == (NAME, RATE, ["acce", "gyro"])
    capsys.readouterr()
    assert main(["data", "inspect", "anklet", "--data-dir", str(wristband.parent)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'anklet'" in err and "docs/sensors.md, 'Generic format'" in err
    assert "## Generic format" in (REPO / "docs" / "sensors.md").read_text()  # the error points at a real section
    assert main(["data", "inspect", "--data-dir", str(wristband.parent)]) == 2  # a root: which dataset?
    assert "no dataset named" in capsys.readouterr().err


def test_reproduce_export_infer(reproduced, wristband, tmp_path, capsys):
    assert f"| {NAME} | acce-gyro |" in (reproduced / "results.md").read_text()
    info = _run_info(reproduced)
    assert (info["dataset"], info["rate_hz"], info["federation"]) == (NAME, RATE, f"reproduce-{NAME}")
    assert main(["export", "keygen", "--out", str(tmp_path / "agg")]) == 0
    assert main(["export", "--run", str(_run(reproduced)), "--out", str(tmp_path / "pkg"),
                 "--key", str(tmp_path / "agg.key")]) == 0
    package = verify_package(tmp_path / "pkg", load_public_key(tmp_path / "agg.pub"))
    assert (package.manifest.dataset, package.manifest.rate_hz) == (NAME, RATE)
    capsys.readouterr()
    assert main(["infer", "--model", str(tmp_path / "pkg"), "--source", "replay:", "--data-dir", str(wristband),
                 "--public-key", str(tmp_path / "agg.pub"), "--max-windows", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and all(d["label"] in LABELS and 0 < d["confidence"] <= 1 for d in lines)


def test_run_without_a_rate_is_refused_by_export_in_one_line(reproduced, tmp_path, capsys):
    """A run folder written before the rate was recorded (rate_hz 0.0) gets one clear line, not a traceback."""
    run = shutil.copytree(_run(reproduced), tmp_path / "old-run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "rate_hz": 0.0}))
    assert main(["export", "keygen", "--out", str(tmp_path / "agg")]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "pkg"), "--key", str(tmp_path / "agg.key")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rate_hz" in err[0]


@pytest.mark.broker
def test_simulate_through_mosquitto(reproduced, wristband, tiny, mosquitto, tmp_path, capsys):
    """Same data, config and seed as ``reproduced``: the same final probe, now through a real broker."""
    out = tmp_path / "sim"
    assert main(["simulate", "--broker", mosquitto.url, "--data-dir", str(wristband), "--config", str(tiny),
                 "--rounds", "1", "--clients", "1,1,1", "--per-round", "3", "--out", str(out), "--no-progress"]) == 0
    assert "final probe weighted F1" in capsys.readouterr().out
    info = _run_info(out)
    assert (info["dataset"], info["rate_hz"]) == (NAME, RATE)
    assert json.loads((out / "wire.json").read_text())["messages"]["upload"] >= 3
    finals = [{k: v for k, v in json.loads(line).items() if k.startswith("probe_")}
              for folder in (reproduced, out) for line in (folder / "final.jsonl").read_text().splitlines()
              if json.loads(line)["algorithm"] == "fedmekt-c"]
    assert len(finals) == 2 and finals[0] == finals[1] and finals[0]


@pytest.mark.broker
@pytest.mark.slow
def test_aggregator_and_split_clients_as_processes(wristband, tmp_path):
    fed = ProcessFederation(tmp_path, rounds=1, clients=(1, 1, 1), per_round=3, round_timeout=120, proxy_windows=6)
    try:
        fed.config.write_text(fed.config.read_text().replace('dataset = "demo"', f'dataset = "{NAME}"')
                              .replace(QUICK_HYPER_TOML, "") + SMALL)  # SMALL has its own [hyper]
        fed.start_aggregator("--data-dir", str(wristband))
        for cid in fed.client_ids:
            fed.start_client(cid, True, "--data-dir", str(wristband))
        fed.run_to_end(timeout=300)
    finally:
        fed.close()
    info = _run_info(fed.out)
    assert (info["dataset"], info["rate_hz"]) == (NAME, RATE)
    # the aggregator ends as simulate does: its F1 figures named, and the report
    log = fed.log("aggregator")
    for label in ("deployed model, the encoder and head its packages ship", "majority-class floor"):
        assert label in log, log[-3000:]
    assert f"report: {fed.out / 'report.html'}" in log and (fed.out / "report.html").stat().st_size > 10_000


def test_string_labels_are_one_clear_error(tmp_path):
    data = write_generic(tmp_path / "strings", subjects=4, seconds=2, string_labels=True)
    for args in (["data", "inspect", "--data-dir", str(data)],
                 ["reproduce", "--data-dir", str(data), "--rounds", "1", "--no-progress"]):
        done = fedmekt(*args, cwd=tmp_path)
        assert done.returncode == 2
        assert_one_clear_error(done, f"{args[0]}: string labels", "label column 'label' holds text")


def test_missing_label_column_is_one_clear_error(tmp_path, capsys):
    """Looking at unlabelled data is fine; training on it stops before anything starts (no broker, no run)."""
    data = write_generic(tmp_path / "nolabels", subjects=4, seconds=2, label_column=False)
    assert main(["data", "inspect", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == {"unlabelled": 4 * 200}
    for command in ("reproduce", "simulate"):
        assert main([command, "--data-dir", str(data), "--rounds", "1", "--out", str(tmp_path / command),
                     "--no-progress"]) == 2
        captured = capsys.readouterr()
        err = [line for line in captured.err.splitlines() if line.strip()]
        assert len(err) == 1 and "no row of dataset 'wristband' has a label" in err[0] and "label_column" in err[0]
        assert "broker" not in captured.out


def test_missing_label_names_are_the_ids(tmp_path, capsys):
    data = write_generic(tmp_path / "unnamed", subjects=4, seconds=2, label_names=False)
    assert main(["data", "inspect", "--data-dir", str(data), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["labels"]) <= {"0", "1", "2"}



@pytest.mark.parametrize("body, says", [("", "no data rows under the header"),
                                        ("1,2,3,4,5,6,0\n1,2,3\n", "malformed CSV")])
def test_header_only_or_ragged_csv_is_one_clear_error(tmp_path, body, says):
    data = write_generic(tmp_path / "bad", subjects=4, seconds=2)
    victim = sorted(data.rglob("*.csv"))[0]
    victim.write_text(victim.read_text().splitlines()[0] + "\n" + body)
    done = fedmekt("data", "inspect", "--data-dir", str(data), cwd=tmp_path)
    assert done.returncode == 2
    assert_one_clear_error(done, "data inspect", says)
