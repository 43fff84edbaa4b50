"""What ``fedmekt simulate`` (``make demo``) prints in a terminal: one line per round, log lines never glued to a
progress bar, and a Ctrl-C that ends it without a warning (issue 23 #8). Run as a user runs it, Ctrl-C included
(SIGINT to the whole process group, as a terminal sends it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from federation_harness import _cmd

pytestmark = pytest.mark.broker
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def test_simulate_prints_one_line_per_round_and_a_quiet_ctrl_c(tmp_path):
    proc = subprocess.Popen(_cmd() + ["simulate", "--rounds", "4", "--clients", "1,1,1", "--per-round", "3",
                                      "--proxy-windows", "8", "--out", str(tmp_path / "sim")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:   # the progress bar included (it redraws with \r, no newline)
            lines.append(line)
            if "round 2 of 4 closed" in line:
                break
        else:
            pytest.fail("simulate ended before round 2 closed:\n" + "".join(lines)[-3000:])
        os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines) + rest
    logged = [line.split("\r")[-1] for line in text.splitlines() if re.search(r" (DEBUG|INFO|WARNING|ERROR) ", line)]
    assert all(TIMESTAMP.match(line) for line in logged), \
        "a log line glued to a progress bar:\n" + "\n".join(repr(x) for x in text.splitlines() if "INFO" in x)
    assert [x for x in logged if " round " in x] == [x for x in logged if re.search(r"round [12] of 4 closed", x)]
    assert len([x for x in logged if " round " in x]) == 2, logged   # one line per round, nothing else about rounds
    assert not [x for x in logged if "edge_client" in x], logged       # the devices' lines are -v's
    assert "WARNING" not in text and "disconnected" not in text, text[-3000:]
    assert proc.returncode == 130 and text.rstrip().endswith("fedmekt simulate: interrupted"), text[-2000:]
