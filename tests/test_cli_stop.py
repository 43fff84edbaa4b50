"""``fedmekt stop RUN``: a run the kit started is stopped through its run folder, as a user runs the command;
a run that is not running (ended, its process gone, on another host) is refused with one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from federation_harness import _cmd
from wait_support import wait_for


def fedmekt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd() + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def _state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "run-state.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.broker
def test_stop_ends_a_waiting_aggregator_by_its_run_id(federation, tmp_path: Path):
    fed = federation(rounds=2, clients=(1, 1, 1), per_round=3)
    runs = tmp_path / "runs"
    agg = fed.start_aggregator(out=runs / "lab")   # no client comes: it waits for them (up to 180 s)
    fed.wait_until(lambda: (_state(runs / "lab") or {}).get("state") == "running", 120,
                   "the aggregator to record its run")
    wait_for(lambda: "waiting for" in fed.log("aggregator"), 60, "the aggregator to wait for clients",
             detail=lambda: fed.log("aggregator")[-2000:])
    done = fedmekt("stop", "lab", "--dir", str(runs))
    assert done.returncode == 0, done.stderr
    assert f"lab: asked process {agg.pid} to stop (SIGTERM)" in done.stdout
    assert "lab: stopped before its first round; nothing was kept" in done.stdout, done.stdout
    assert agg.poll() == 143, fed.log("aggregator")[-2000:]      # ended by then: stop waited for it
    assert "terminated" in fed.log("aggregator") and "Traceback" not in fed.log("aggregator")


def _write_state(folder: Path, command: str = "aggregator", **fields) -> None:
    from fedmekt_cli.run_record import RunState

    folder.mkdir(parents=True)
    (folder / "run-state.json").write_text(json.dumps(asdict(RunState(command, **fields))))


def test_stop_refuses_a_run_that_is_not_running(tmp_path: Path):
    """Ended, a dead pid, a pid since given to another process, another host: one line each, exit 2, no signal."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    _write_state(tmp_path / "done", state="finished")
    _write_state(tmp_path / "failed", state="failed", error="no client came online within 600 s")
    _write_state(tmp_path / "dead", pid=gone.pid)
    _write_state(tmp_path / "reused", pid=os.getpid(), pid_start=1)   # this pid, but not the process that ran it
    _write_state(tmp_path / "far", host=socket.gethostname() + "-elsewhere")
    expected = {"done": "done is not running: it finished",
                "failed": "failed is not running: it failed (no client came online within 600 s)",
                "dead": f"dead is not running: its process {gone.pid} is gone",
                "reused": f"reused is not running: its process {os.getpid()} is gone",
                "far": f"far runs on host {socket.gethostname()}-elsewhere, not here"}
    for name, message in expected.items():
        done = fedmekt("stop", str(tmp_path / name))
        assert done.returncode == 2 and done.stderr.startswith(f"fedmekt stop: error: {message}"), done.stderr
        assert done.stderr.count("\n") == 1 and done.stdout == ""
    missing = fedmekt("stop", "nope", "--dir", str(tmp_path))
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_a_used_run_folder_is_never_reopened(tmp_path: Path):
    """simulate and reproduce start afresh: an --out holding any run is refused (it would mix two runs' files);
    no command writes into the folder of a running run (issue 23: a finished run is never reopened by accident)."""
    from fedmekt_cli.run_record import process_start

    _write_state(tmp_path / "done", state="finished", command="simulate")
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "metrics.jsonl").write_text('{"run": "rows", "round": 0}\n')
    _write_state(tmp_path / "live", pid=os.getpid(), pid_start=process_start(os.getpid()))   # this test "runs" it
    (tmp_path / "fed.toml").write_text('federation = "lab"\ndataset = "demo"\nclients = [1, 1, 1]\nper_round = 3\n'
                                       'rounds = 2\n')
    cases = [(["simulate", "--out", "done"], "done already holds a finished simulate run: pass a new --out"),
             (["reproduce", "--dataset", "demo", "--out", "rows"], "rows already holds a run: pass a new --out"),
             (["simulate", "--out", "live"], f"live is the folder of a running aggregator (process {os.getpid()})"),
             (["aggregator", "--broker", "mqtt://127.0.0.1:1", "--config", "fed.toml", "--out", "live"],
              "live is the folder of a running aggregator")]
    for argv, message in cases:
        done = fedmekt(*argv, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, (argv, done.stderr)
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["run-state.json"]   # untouched


def test_a_state_written_before_pid_start_was_recorded_still_names_its_live_process(tmp_path: Path):
    from fedmekt_cli.run_record import RunState

    run = subprocess.Popen(["sleep", "60"])   # the run's process: another one than this reader
    try:
        (tmp_path / "old").mkdir()
        state = {"command": "aggregator", "state": "running", "pid": run.pid, "host": socket.gethostname(),
                 "argv": [], "started": 0.0, "ended": None, "info": {}, "error": None}
        (tmp_path / "old" / "run-state.json").write_text(json.dumps(state))
        read = RunState.read(tmp_path / "old")
        assert read is not None and read.pid_start is None and read.alive()
    finally:
        run.kill()
        run.wait()
