"""Run management and the CLI's manners: ``runs``, ``log``, ``status``, ``--version``, logging flags, broken pipes,
SIGTERM of ``simulate`` (no mosquitto left behind) and no empty run folders. Every command runs as a user runs it."""

from __future__ import annotations

import argparse

import json
import logging
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from federation_harness import _cmd
from fedmekt_cli.main import build_parser, setup_logging
from run_folder_support import make_run_folder
from wait_support import wait_for


def fedmekt(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd() + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """``finished``: a real run folder; ``partial``: its rounds without the final probe, as a killed run leaves it."""
    root = tmp_path_factory.mktemp("runs")
    make_run_folder(root / "finished", seeds=(0,), rounds=2)
    (root / "partial").mkdir()
    shutil.copy(root / "finished" / "metrics.jsonl", root / "partial" / "metrics.jsonl")
    (root / "not-a-run").mkdir()
    return root


def test_version():
    done = fedmekt("--version")
    assert done.returncode == 0 and re.fullmatch(r"fedmekt \d+\.\d+\.\d+\S*\n", done.stdout)


def test_help_text_has_no_rest_markup():
    """Module docstrings are the subcommands' descriptions; their ``literals`` must print plainly."""
    from fedmekt_cli.main import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subcommands.items():
        text = sub.format_help()
        assert "``" not in text, f"fedmekt {name} --help shows reST markup"


def test_runs_lists_status_rounds_algorithm_and_f1(runs_dir: Path):
    done = fedmekt("runs", str(runs_dir), "-v")   # -v after the subcommand is accepted
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert set(lines) == {"finished", "partial"}
    assert re.search(r"finished\s+–\s+finished\s+2/2\s+fedmekt-c\[W8\]\s+demo acce-gyro\s+acce 0\.\d{3}, gyro "
                     r"0\.\d{3}\s+acce 0\.\d{3}, gyro 0\.\d{3}$", lines["finished"])   # final probe, then last round
    assert re.search(r"partial\s+–\s+interrupted\s+2/\?.*\s–\s+acce 0\.\d{3}", lines["partial"])   # no final probe yet
    listed = json.loads(fedmekt("runs", str(runs_dir), "--json").stdout)
    final = [json.loads(x) for x in (runs_dir / "finished" / "final.jsonl").read_text().splitlines()][0]
    by_id = {r["id"]: r for r in listed}
    assert by_id["finished"]["f1"]["acce"] == pytest.approx(final["probe_f1_weighted_acce"])
    assert by_id["partial"]["status"] == "interrupted" and by_id["partial"]["f1"] == {}
    assert by_id["partial"]["f1_last_round"]["acce"] == by_id["finished"]["f1_last_round"]["acce"]


def test_runs_says_why_a_run_failed(tmp_path: Path):
    from fedmekt_cli.run_record import RunRecord

    with pytest.raises(RuntimeError):
        with RunRecord(tmp_path / "lab", "aggregator", rounds=6):
            (tmp_path / "lab" / "metrics.jsonl").write_text("")
            raise RuntimeError("no client came online within 300 s\nsecond line")
    done = fedmekt("runs", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "  └ failed: no client came online within 300 s"
    (listed,) = json.loads(fedmekt("runs", str(tmp_path), "--json").stdout)
    assert (listed["status"], listed["error"]) == ("failed", "no client came online within 300 s")


def test_runs_table_shows_the_federation_run_the_gateways_log(runs_dir: Path, tmp_path: Path):
    """A gateway's log names the federation run id (``e<epoch>-<hex>``) beside the run's name: the table shows it
    too (it was in ``--format json`` only), so a gateway's line leads to its run folder (issue 23 #11)."""
    from fedmekt_cli.run_record import RunRecord

    with RunRecord(tmp_path / "lab", "aggregator", rounds=2) as record:
        row = {"run": "lab", "federation_run": "e3-0a1b2c3d", "round": 0, "f1_paper_acce": 0.5}
        (tmp_path / "lab" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        record.update(federation_run="e3-0a1b2c3d")
    shutil.copytree(runs_dir / "partial", tmp_path / "partial")   # an in-process run: no federation run
    done = fedmekt("runs", str(tmp_path))
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert re.match(r"RUN\s+FEDERATION RUN\s+STATUS\s+ROUNDS\s", header), done.stdout
    rows = {line.split()[0]: line.split()[1] for line in lines}
    assert rows == {"lab": "e3-0a1b2c3d", "partial": "–"}, done.stdout


def test_runs_of_a_missing_folder_is_one_line_error(tmp_path: Path):
    done = fedmekt("runs", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and done.stderr.strip().startswith("fedmekt runs: error:")


def test_broken_pipe_is_not_an_error(runs_dir: Path, tmp_path: Path):
    for i in range(400):   # enough output to fill the pipe
        (tmp_path / f"run{i:03d}").mkdir()
        shutil.copy(runs_dir / "partial" / "metrics.jsonl", tmp_path / f"run{i:03d}")
    proc = subprocess.Popen(_cmd() + ["runs", str(tmp_path), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "["
    proc.stdout.close()                       # `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "Broken pipe" not in err, err


def test_log_json_and_quiet_third_party_loggers(tmp_path: Path, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("fedmekt").level
    try:
        setup_logging(build_parser().parse_args(["runs", str(tmp_path), "--log-json", "-v"]))
        logging.getLogger("fedmekt.test").debug("ours at debug")
        logging.getLogger("matplotlib.font_manager").info("library chatter")
        logging.getLogger("matplotlib").warning("library warning")
        records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("fedmekt").setLevel(saved[2])
    assert [(r["logger"], r["level"], r["message"]) for r in records] == [
        ("fedmekt.test", "DEBUG", "ours at debug"), ("matplotlib", "WARNING", "library warning")]


def test_log_of_a_run_without_log_is_one_line_error(runs_dir: Path):
    done = fedmekt("log", "fin", "--dir", str(runs_dir))   # an id prefix resolves to runs_dir/finished
    assert done.returncode == 2 and "has no run.log" in done.stderr and str(runs_dir / "finished") in done.stderr


@pytest.mark.broker
def test_status_exits_nonzero_when_nothing_runs(mosquitto):
    done = fedmekt("status", "--broker", mosquitto.url, "--wait", "0.5")
    assert done.returncode == 1 and "federation demo: nothing running" in done.stdout
    s = json.loads(fedmekt("status", "--broker", mosquitto.url, "--wait", "0.5", "--json").stdout)
    assert s["running"] is False and s["clients"] == {}


def test_failed_simulate_leaves_no_run_folder(tmp_path: Path):
    done = fedmekt("simulate", "--pair", "acce-nosuch", "--out", str(tmp_path / "sim"), "--no-progress")
    assert done.returncode == 2 and "nosuch" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "sim").exists()


def _mosquitto_pids(port: int) -> list[int]:
    """mosquitto processes whose config listens on ``port`` (the embedded broker of one simulate)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if proc.name.isdigit() and b"mosquitto" in argv[0] and b"-c" in argv:
                conf = Path(argv[argv.index(b"-c") + 1].decode()).read_text()
                if f"listener {port} " in conf:
                    pids.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.broker
@pytest.mark.slow
def test_sigterm_of_simulate_stops_its_broker_and_leaves_a_partial_run(tmp_path: Path):
    """While it runs, `status --json` sees the federation simulate printed; SIGTERM ends it cleanly."""
    out = tmp_path / "sim"
    proc = subprocess.Popen(_cmd() + ["simulate", "--rounds", "40", "--clients", "1,1,1", "--per-round", "3",
                                      "--proxy-windows", "8", "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            assert line, f"simulate ended early: {proc.stderr.read()[-2000:]}"
            match = re.match(r"federation demo on broker (mqtt://127\.0\.0\.1:(\d+))", line)
            url, port = (match.group(1), int(match.group(2))) if match else (None, 0)
        pids = _mosquitto_pids(port)
        assert len(pids) == 1
        def round_1_announced() -> dict | None:  # round 0 is done and logged (the line comes before the announcement)
            done = fedmekt("status", "--broker", url, "--json")   # default federation = simulate's
            s = json.loads(done.stdout)
            return s if done.returncode == 0 and s.get("running") and s.get("last_metrics") \
                and (s.get("round_index") or 0) >= 1 else None

        s = wait_for(round_1_announced, 180, "`fedmekt status` to show round 1 announced", every=0)
        assert s["federation"] == "demo" and s["round_index"] >= 1 and s["last_metrics"]["round"] >= 1
        assert sorted(s["clients"]) == ["c000", "c001", "c002"]
        assert all(c["state"] == "online" for c in s["clients"].values())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "fedmekt simulate: terminated" in err and "Traceback" not in err, err[-2000:]
    wait_for(lambda: not _mosquitto_pids(port) and not _port_open(port) and not any(
        Path(f"/proc/{p}").exists() for p in pids), 30, "the embedded broker and the clients to be gone",
        detail=lambda: f"mosquitto {_mosquitto_pids(port)}, port open {_port_open(port)}")
    state = json.loads((out / "run-state.json").read_text())
    assert state["state"] == "interrupted" and state["info"]["federation"] == "demo"
    assert (out / "report.html").stat().st_size > 10_000        # the finished rounds, rendered
    listed = {r["id"]: r for r in json.loads(fedmekt("runs", str(tmp_path), "--json").stdout)}
    assert listed["sim"]["status"] == "interrupted" and listed["sim"]["rounds_done"] >= 1
    log = fedmekt("log", str(out), "-n", "0", "--follow")   # follows only while the run lives: returns
    assert log.returncode == 0 and "round 1 of 40 closed: 3 of 3 uploads" in log.stdout


def test_run_state_masks_passwords_of_the_command_line():
    from fedmekt_cli.run_record import redacted

    argv = ["fedmekt", "aggregator", "--broker", "mqtts://bob:s3cret@lab:8883,mqtt://a:pw@h2:1883",
            "--password", "hunter2", "--password=x", "--out", "runs/a"]
    text = " ".join(redacted(argv))
    assert not any(secret in text for secret in ("s3cret", "pw@", "hunter2", "=x"))
    assert "mqtts://bob:***@lab:8883,mqtt://a:***@h2:1883" in text and text.endswith("--out runs/a")
