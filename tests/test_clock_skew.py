"""Parties whose wall clocks are wrong, through a real mosquitto: no run order or deadline may depend on them.

A Raspberry Pi has no real-time clock; a lab server's can be off too. Each party runs as its own process
with its wall clock shifted by libfaketime (its monotonic clock stays true, as on such a device): two
daemon gateways an hour ahead, one on the true clock, an aggregator first on the true clock and then,
restarted for a fresh run, a day behind. Every round must complete with every selected upload (rounds
close on the quorum, not the deadline) and both runs' final packages must install.
"""

from __future__ import annotations

import datetime
import json
import re
import time

import pytest

from export.install import ModelStore
from export.package import PackageError, generate_keypair, load_public_key
from federation_harness import ProcessFederation, faketime_lib
from fedmekt.wire.runs import run_epoch

pytestmark = pytest.mark.skipif(faketime_lib() is None, reason="libfaketime not installed (make test installs it)")


@pytest.fixture
def fed(federation) -> ProcessFederation:
    return federation(rounds=2, clients=(1, 1, 1), per_round=3, round_timeout=120.0, federation="clock")


def _installed(fed: ProcessFederation, cid: str, key) -> tuple[int, int] | None:
    """(run epoch, round) of the package in service on ``cid``; None when none (or mid-install)."""
    try:
        current = ModelStore(fed.store(cid).parent / "models", key).current()
    except PackageError:
        return None
    return None if current is None else (run_epoch(current.package.manifest.run), current.package.manifest.round)


def _run(fed: ProcessFederation, key, epoch: int, **aggregator) -> None:
    """One aggregator run to its end, then every gateway's final package of that run in service."""
    fed.start_aggregator("--signing-key", str(fed.tmp / "agg.key"), "--package-every", "1", **aggregator)
    assert fed.wait_exit("aggregator", 300) == 0, fed.log("aggregator")[-3000:]
    fed.wait_until(lambda: all(_installed(fed, cid, key) == (epoch, 2) for cid in fed.client_ids), 120,
                   f"every gateway to install round 2 of epoch {epoch}: "
                   f"{[_installed(fed, cid, key) for cid in fed.client_ids]}")


@pytest.mark.slow
@pytest.mark.broker
def test_gateways_an_hour_ahead_follow_an_aggregator_restarted_a_day_behind(fed, tmp_path):
    generate_keypair(tmp_path / "agg.key", tmp_path / "agg.pub")
    key = load_public_key(tmp_path / "agg.pub")
    ahead = fed.client_ids[:2]
    for cid in fed.client_ids:
        fed.start_client(cid, True, "--public-key", str(tmp_path / "agg.pub"), exit_when_done=False,
                         clock="+1h" if cid in ahead else None)
    _run(fed, key, 1, out=tmp_path / "run1")
    _run(fed, key, 2, out=tmp_path / "run2", clock="-1d")

    started = json.loads((tmp_path / "run2" / "run-state.json").read_text())["started"]
    assert started < time.time() - 23 * 3600  # the second aggregator really ran a day behind
    for cid in ahead:  # and these gateways an hour ahead: their log lines are stamped with their clock
        stamp = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", fed.log(cid), re.M)
        assert stamp, fed.log(cid)[:500]
        ahead_by = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S") - datetime.datetime.now()
        assert ahead_by > datetime.timedelta(minutes=50), (cid, ahead_by)
    rows = fed.metrics()
    assert sum(r["round"] == 0 for r in rows) >= 2 and sum(r["round"] == 1 for r in rows) >= 2, rows
    assert all(r["absorbed"] == r["selected"] == 3 for r in rows), [(r["round"], r["absorbed"]) for r in rows]
    assert (tmp_path / "clock.epoch").read_text() == "2\n"  # the run counter beside the run folders
    for cid in fed.client_ids:
        assert json.loads((fed.store(cid).parent / "run-trust.json").read_text()) == {"min_epoch": {"clock": 2}}
        assert "older than" not in fed.log(cid), fed.log(cid)[-2000:]
