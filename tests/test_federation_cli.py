"""The deployment commands as separate processes: `fedmekt aggregator`, three `fedmekt client`s, `fedmekt status`.

Separate processes share nothing but the broker; the final metrics must still equal the in-process run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core_support import quick_hyper_config
from fedmekt.config import load_config
from fedmekt.experiment.in_process import run_inprocess
from sensors.datasets import load_dataset
from sensors.splits import make_split

pytestmark = [pytest.mark.broker, pytest.mark.slow]
CONFIG = """
federation = "clitest"
dataset = "demo"
clients = [1, 1, 1]
per_round = 3
rounds = 2
proxy_windows = 8
device = "cpu"
[hyper]
classifier_epochs = 1
probe_max_iter = 20
deploy_rounds = 2
"""


def _fedmekt(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmekt_cli", *args]


def test_aggregator_and_clients_as_processes_equal_inprocess(mosquitto, tmp_path: Path):
    config = tmp_path / "federation.toml"
    config.write_text(CONFIG)
    out = tmp_path / "runs" / "agg"   # the run's id is "agg" (commands below run where `runs/` is)
    agg = subprocess.Popen(_fedmekt("aggregator", "--broker", mosquitto.url, "--config", str(config), "--out",
                                    str(out), "--wait-clients", "3", "--wait-timeout", "120", "--no-progress"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    clients = [subprocess.Popen(_fedmekt("client", "--broker", mosquitto.url, "--client-id", cid, "--federation",
                                         "clitest", "--source", f"split:{config}", "--store",
                                         str(tmp_path / cid / "store.sqlite"), "--exit-when-done"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for cid in ("c000", "c001", "c002")]
    try:
        agg_out, _ = agg.communicate(timeout=400)
        client_out = [c.communicate(timeout=60)[0] for c in clients]
    finally:
        for p in [agg, *clients]:
            if p.poll() is None:
                p.kill()
    assert agg.returncode == 0, agg_out[-2000:]
    for c, text in zip(clients, client_out):
        assert c.returncode == 0 and "federation finished" in text, text[-2000:]
    status = subprocess.run(_fedmekt("status", "--broker", mosquitto.url, "--federation", "clitest"),
                            capture_output=True, text=True, timeout=60)
    assert "finished after 2 rounds" in status.stdout and "3 clients known, 0 online" in status.stdout
    listing = subprocess.run(_fedmekt("runs", "--json"), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    runs = {r["id"]: r for r in json.loads(listing.stdout)}
    assert runs["agg"]["status"] == "finished" and runs["agg"]["rounds_done"] == 2, runs
    assert "round 2 of 2 closed" in (out / "run.log").read_text()

    # one run identity (issue 23 #11): the folder's name in every row and in status; the federation run id
    # (the aggregator logs it) is recorded beside it, and names the same run
    fed_run = runs["agg"]["federation_run"]
    assert re.fullmatch(r"e\d+-[0-9a-f]{8}", fed_run or ""), runs["agg"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["run"], r["federation_run"]) for r in rows} == {("agg", fed_run)}
    assert f"of run agg (federation run {fed_run})" in status.stdout, status.stdout
    # the signed manifest names the run as the folder does: status says which run finished, metrics aside
    assert status.stdout.startswith(f"federation clitest, run agg (federation run {fed_run}): finished after 2 rounds")
    log = subprocess.run(_fedmekt("log", fed_run, "-n", "0"), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert log.returncode == 0 and "round 2 of 2 closed" in log.stdout, log.stderr
    subprocess.run(_fedmekt("export", "keygen", "--out", "agg"), check=True, capture_output=True, cwd=tmp_path)
    export = subprocess.run(_fedmekt("export", "--run", "agg", "--out", "pkg", "--key", "agg.key"),
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert export.returncode == 0 and "signed" in export.stdout, export.stderr[-2000:]
    assert export.stdout.count("\n") == 1 and " INFO " not in export.stderr, export.stderr   # said once
    assert f"(run agg, federation run {fed_run})" in agg_out   # the aggregator's first line names both
    report = subprocess.run(_fedmekt("report", "agg"), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert report.returncode == 0 and f"report: {Path('runs') / 'agg' / 'report.html'}" in report.stdout, report.stderr

    cfg = load_config(config)
    split = make_split(load_dataset("demo"), cfg.pair, seed=cfg.seed, clients=cfg.clients)
    ref = run_inprocess(cfg, split, progress=False)
    final = [json.loads(x) for x in (out / "final.jsonl").read_text().splitlines()][0]
    for key, value in ref.final.items():
        if key.startswith(("probe_", "majority_")):
            assert final[key] == value, key


def test_client_with_unknown_source_is_one_line_error(tmp_path: Path):
    res = subprocess.run(_fedmekt("client", "--broker", "mqtt://127.0.0.1:1", "--client-id", "c000", "--source",
                                  "carrier-pigeon:1", "--store", str(tmp_path / "s.sqlite")),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown source" in res.stderr and "Traceback" not in res.stderr


def test_simulate_command_runs_the_demo_path_and_writes_the_report(tmp_path: Path):
    """`fedmekt simulate` without --broker/--dataset is what `make demo` runs (shortened here, the deployed
    model's fine-tuning too)."""
    out = tmp_path / "demo"
    res = subprocess.run(_fedmekt("simulate", "--rounds", "2", "--clients", "1,1,1", "--per-round", "3",
                                  "--proxy-windows", "8", "--config", str(quick_hyper_config(tmp_path)),
                                  "--out", str(out), "--no-progress"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "final probe weighted F1" in res.stdout and "as MQTT packets" in res.stdout
    assert "federation demo on broker mqtt://127.0.0.1:" in res.stdout   # what `fedmekt status` looks at
    assert f"report: {out / 'report.html'}" in res.stdout and (out / "report.html").stat().st_size > 10_000
    assert (out / "results.md").exists() and (out / "final.jsonl").exists()
    wire = json.loads((out / "wire.json").read_text())
    assert wire["messages"]["upload"] >= 2 * 3 and wire["payload_bytes"]["proxy"] > 0
    assert "round 2 of 2 closed" in (out / "run.log").read_text()


def test_simulate_json_summary(tmp_path: Path):
    out = tmp_path / "sim"
    res = subprocess.run(_fedmekt("simulate", "--rounds", "1", "--clients", "1,1,1", "--per-round", "3",
                                  "--proxy-windows", "8", "--config", str(quick_hyper_config(tmp_path)),
                                  "--out", str(out), "--no-progress", "--json"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(res.stdout)   # stdout is the JSON object alone
    final = json.loads((out / "final.jsonl").read_text())
    assert s["federation"] == "demo" and s["rounds"] == 1 and s["report"] == str(out / "report.html")
    assert s["probe_f1_weighted"]["acce"] == final["probe_f1_weighted_acce"]
    assert s["upload_packet_bytes_per_round"] > s["upload_message_bytes_per_round"] > 0
