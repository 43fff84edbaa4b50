"""A gateway restarted on its store with the same finite source (``split:``, ``replay:``, a file) keeps its samples
once: it used to read the source again on every start, doubling what it trains on (seen in the newcomer walk)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from federation_harness import _cmd

pytestmark = pytest.mark.broker
CONFIG = 'federation = "restart"\ndataset = "demo"\nclients = [1, 1, 1]\nper_round = 3\nrounds = 2\n'


def _start_and_interrupt(args: list[str], cwd: Path) -> str:
    """Run ``fedmekt client`` until it waits for the federation, then Ctrl-C it; its output."""
    proc = subprocess.Popen(_cmd() + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "waiting for the manifest" in line:
                break
        else:
            pytest.fail("the client ended before waiting for the federation:\n" + "".join(lines)[-3000:])
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return "".join(lines) + rest


def test_a_restarted_gateway_reads_a_finite_source_once(mosquitto, tmp_path: Path):
    (tmp_path / "federation.toml").write_text(CONFIG)
    args = ["client", "--broker", mosquitto.url, "--client-id", "c000", "--federation", "restart",
            "--source", "split:federation.toml"]
    first = _start_and_interrupt(args, tmp_path)
    read = re.search(r"c000: (\d+) samples read into \S+ \((\d+) stored\)", first)
    assert read and read.group(1) == read.group(2), first[-2000:]
    second = _start_and_interrupt(args, tmp_path)
    assert f"c000: split:federation.toml was read into fedmekt-c000/store.sqlite before ({read.group(2)} stored); " \
           "not read again" in second, second[-2000:]
    assert "samples read into" not in second
