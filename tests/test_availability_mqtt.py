"""Availability failures an operator meets, each through a real mosquitto with real processes.

* no_client_online: every gateway restarts at once mid-run; the aggregator waits for them and resumes;
* next_run: daemon clients left running train in the next run (its proxy chunks precede its manifest);
* exit_when_done: a client started before a new run's manifest does not quit on the previous run's "done";
* phantom: retained "online" statuses of a stale or unprovisioned id, or a live one of an unknown id, are
  never selected, so no round stalls to its deadline;
* magnitude: an upload of valid shape with values 3e38 is rejected and counted, the honest one lands.

The crash loop of an altered installed model is in tests/test_availability_models.py.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from fault_ledger import record
from federation_harness import ProcessFederation
from fedmekt.wire import manifest as fedwire

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_status(fed: ProcessFederation, cid: str) -> str | None:
    topic = f"fedmekt/{fed.federation}/clients/{cid}/status"
    found = [p for _, t, p in fed.recorder.snapshot() if t == topic and p]
    return json.loads(found[-1])["state"] if found else None


def test_no_client_online_aggregator_waits_for_restarted_gateways(federation):
    """Every gateway restarts at once (a site power cut) and one takes longer than the others to come back
    (on a Pi, ``import torch`` alone takes seconds): the next round waits for all of them, as round 0 did,
    instead of opening for the first one back and leaving the slow one out of the rounds that follow."""
    fed = federation(rounds=4, clients=(1, 1, 1), per_round=3, round_timeout=60.0)
    fed.start_all("-v")   # "round N opens" is a debug line
    fed.wait_round_done(0)
    fed.wait_announced(1)
    for cid in fed.client_ids:
        fed.kill(cid)
    cut = "no client is online before round"

    def after_cut() -> str:
        log = fed.log("aggregator")
        return log[log.index(cut):] if cut in log else ""

    fed.wait_until(after_cut, 120, "the aggregator to notice that every gateway is gone")
    fast, slow = fed.client_ids[:2], fed.client_ids[2]
    for cid in fast:
        fed.start_client(cid, fill_store=False)
    # proof the aggregator saw the fast two back and still holds the round for the third
    fed.wait_until(lambda: "waiting for 3 clients (2 online)" in after_cut(), 120, "the aggregator to see 2 back")
    assert " opens: " not in after_cut(), after_cut()
    fed.start_client(slow, fill_store=False)
    fed.run_to_end(timeout=300)
    rows = rows_of(fed.out / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(fed.rounds))
    reopened = int(after_cut().split(cut, 1)[1].split()[0].rstrip(":")) - 1  # logs count rounds from 1
    assert [(r["selected"], r["absorbed"]) for r in rows[reopened:]] == [(3, 3)] * (fed.rounds - reopened)
    assert "Traceback" not in fed.log("aggregator")
    record("fault", "no_client_online: every gateway restarted at once, one slower", lost=fed.rounds - len(rows))


def test_next_run_daemon_clients_train_in_the_next_run(federation, tmp_path):
    fed = federation(rounds=2, clients=(1, 1, 1), per_round=3)
    for cid in fed.client_ids:
        fed.start_client(cid, exit_when_done=False)
    fed.start_aggregator()
    assert fed.wait_exit("aggregator", 240) == 0, fed.log("aggregator")[-3000:]
    run2 = tmp_path / "run2"  # a fresh run folder: a new run id, the same proxy set
    fed.start_aggregator("--out", str(run2))
    assert fed.wait_exit("aggregator", 240) == 0, fed.log("aggregator")[-3000:]
    first, second = rows_of(fed.out / "metrics.jsonl"), rows_of(run2 / "metrics.jsonl")
    assert [r["absorbed"] for r in first] == [3, 3]
    assert [r["absorbed"] for r in second] == [3, 3], "the daemon clients did not train in the next run"
    assert all(fed.procs[c].poll() is None for c in fed.client_ids)  # daemons keep serving
    record("fault", "next_run: daemon clients follow a new run", lost=sum(r["absorbed"] == 0 for r in second))


def test_exit_when_done_client_ignores_the_previous_runs_done(federation, tmp_path):
    fed = federation(rounds=1, clients=(1, 1, 1), per_round=3)
    fed.start_all()
    fed.run_to_end(timeout=240)  # run 1 is over: its manifest and "done" stay retained
    for cid in fed.client_ids:
        fed.start_client(cid, fill_store=False)
    fed.wait_until(lambda: all(latest_status(fed, c) == "online" for c in fed.client_ids), 60, "clients online")
    # proof each has read the retained manifest and "done" of run 1 (and not quit on them)
    fed.wait_until(lambda: all("finished; waiting for the next run" in fed.log(c) or fed.procs[c].poll() is not None
                               for c in fed.client_ids), 120, "every client to read run 1's retained done")
    quit_early = [c for c in fed.client_ids if fed.procs[c].poll() is not None]
    assert not quit_early, f"{quit_early} quit on the previous run's done:\n{fed.log(quit_early[0])[-2000:]}"
    run2 = tmp_path / "run2"
    fed.start_aggregator("--out", str(run2))
    fed.run_to_end(timeout=240)  # the clients serve run 2 and exit on ITS done
    assert [r["absorbed"] for r in rows_of(run2 / "metrics.jsonl")] == [3]
    record("fault", "exit_when_done: previous run's retained done ignored", tried=3, handled=3)


def test_phantom_statuses_are_never_selected(federation):
    fed = federation(rounds=3, clients=(2, 2, 2), per_round=6, round_timeout=30.0)
    real = fed.client_ids[:5]  # c005 is provisioned but switched off
    client = fed.recorder.client
    online = fedwire.Status("online", ("acce", "gyro")).to_bytes()

    def plant(cid: str) -> None:  # what any login that may write a status topic can do
        client.publish(f"fedmekt/{fed.federation}/clients/{cid}/status", online, qos=1, retain=True).wait_for_publish()

    for phantom in ("c005", "c900"):  # planted retained before the aggregator starts
        plant(phantom)
    for cid in real:
        fed.start_client(cid)
    fed.start_aggregator("--wait-clients", "5", "--client-ids", ",".join(fed.client_ids))
    fed.wait_round_done(0)
    # a live phantom of an unprovisioned id while the aggregator listens
    plant("c901")
    assert fed.wait_exit("aggregator", 240) == 0, fed.log("aggregator")[-3000:]
    plans = [a["plan"] for a in fed.announcements() if a.get("plan")]
    chosen = {c for p in plans for c in p["selected"]}
    rows = rows_of(fed.out / "metrics.jsonl")
    stalled = sum(r["absorbed"] < r["selected"] for r in rows)
    record("attack", "phantom: retained/unknown online status selected", tried=3,
           handled=3 - len(chosen & {"c005", "c900", "c901"}), stalled=stalled)
    assert chosen == set(real), chosen
    assert stalled == 0 and [r["selected"] for r in rows] == [5, 5, 5]
    assert "ignoring status of c900: not a provisioned client" in fed.log("aggregator")


def _round_frames(fed: ProcessFederation, cid: str, round_: int) -> list[bytes]:
    prefix = f"fedmekt/{fed.federation}/clients/{cid}/upload/{round_}/"
    return [p for _, t, p in fed.recorder.snapshot() if t.startswith(prefix)]


def test_magnitude_huge_upload_is_rejected_and_the_honest_one_lands(federation):
    from fedmekt.wire.codec import encode, parse_frame

    fed = federation(rounds=3, clients=(1, 1, 1), per_round=3, round_timeout=60.0)
    fed.start_all()
    fed.wait_round_done(0)
    victim = fed.client_ids[0]
    fed.wait_until(lambda: _round_frames(fed, victim, 0), 30, "the victim's round-0 upload")
    os.killpg(fed.procs[victim].pid, signal.SIGSTOP)  # the honest upload of round 1 comes after the forged one
    try:
        plan = fed.wait_announced(1)
        assert victim in plan["selected"]
        announced = [a for a in fed.announcements() if a.get("plan") and a["plan"]["round"] == 1][-1]
        echo = {"nonce": announced["nonce"]} if announced.get("nonce") else {}  # the attacker sees the announcement
        header = next(h for h in (parse_frame(f)[0] for f in _round_frames(fed, victim, 0)) if h.index == 0)
        huge = {k: np.full(shape, 3e38, np.float32) for k, shape in header.tensors.items()}
        frames = encode(huge, "float32", federation=fed.federation, round_=1, sender=victim, kind="upload",
                        modalities=header.modalities, **echo)
        for i, f in enumerate(frames):
            fed.recorder.client.publish(f"fedmekt/{fed.federation}/clients/{victim}/upload/1/{i}", f,
                                        qos=1).wait_for_publish()
        fed.wait_until(lambda: "beyond 100x" in fed.log("aggregator"), 30, "the forged upload to be rejected")
    finally:
        os.killpg(fed.procs[victim].pid, signal.SIGCONT)
    fed.run_to_end(timeout=240)
    rows = rows_of(fed.out / "metrics.jsonl")
    record("attack", "magnitude: valid-shape upload of 3e38 values", tried=1, handled=int(rows[1]["rejected"] >= 1))
    assert rows[1]["rejected"] >= 1 and rows[1]["absorbed"] == 3
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss") and isinstance(v, float))
