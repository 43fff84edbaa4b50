"""Faults injected into a federation of real processes through a real mosquitto.

* 30 % of the selected clients SIGKILLed mid-round: the round closes at its deadline with
  the rest, the next rounds go on, and the killed clients, restarted on their own store,
  resume their local model and rejoin.
* The broker SIGKILLed and restarted on the same port mid-run: everybody reconnects by
  itself, the uploads published into the outage are asked for and sent again, so no
  round comes up short and the run ends bit for bit as the undisturbed one.
* The aggregator SIGKILLed mid-run and restarted: it resumes after the last completed
  round's checkpoint; no completed round is lost or repeated; the checkpoint is never
  half-written (also hammered directly with SIGKILLs during writes).

Every test tallies its faults in the fault ledger (tests/fault_ledger.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fault_ledger import record
from federation_harness import ProcessFederation
from security_support import connect
from wait_support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def completed_rows(fed: ProcessFederation) -> list[dict]:
    """metrics.jsonl as the aggregator left it (the authoritative record of completed rounds)."""
    text = (fed.out / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_every_round_once(fed: ProcessFederation) -> list[dict]:
    rows = completed_rows(fed)
    assert [r["round"] for r in rows] == list(range(fed.rounds)), [r["round"] for r in rows]
    return rows


def test_killed_clients_round_closes_at_deadline_then_they_rejoin(federation):
    from sensors.store import SampleStore

    fed = federation(rounds=12, clients=(1, 1, 1), per_round=3, round_timeout=20.0)
    fed.start_all()
    fed.wait_round_done(0)
    assert next(r for r in fed.metrics() if r["round"] == 0)["absorbed"] == len(fed.client_ids)
    plan = fed.wait_announced(1)
    victims = sorted(plan["selected"])[: math.ceil(0.3 * len(plan["selected"]))]
    for v in victims:
        fed.kill(v)
    announced_at, announced = [(t, a) for t, a in fed.announcements(timed=True) if a.get("plan")
                               and a["plan"]["round"] == 1][-1]
    deadline = announced_at + announced["timeout"]  # a duration: the recorder counts it from arrival
    fed.wait_round_done(1, timeout=60)
    closed_at = next(t for t, topic, p in fed.recorder.snapshot()
                     if topic.endswith("/metrics") and json.loads(p)["round"] == 1)
    row1 = next(r for r in fed.metrics() if r["round"] == 1)
    got_out = {v for v in victims if any(f"/clients/{v}/upload/1/" in t for _, t, _ in fed.recorder.snapshot())}
    assert row1["selected"] == len(plan["selected"])
    assert row1["absorbed"] == len(plan["selected"]) - len(victims) + len(got_out)
    if not got_out:  # nobody's upload came: the round closed once the victims' Wills said they were gone, or at
        # its deadline, and never later than a few seconds past it
        wills = [t for t, topic, p in fed.recorder.snapshot() if p and any(topic.endswith(f"/clients/{v}/status")
                 for v in victims) and json.loads(p).get("state") == "offline"]
        gone = max(wills) if len(wills) >= len(victims) else deadline
        assert min(gone, deadline) - 0.5 <= closed_at <= deadline + 30
    fed.wait_round_done(2, timeout=60)
    row2 = next(r for r in fed.metrics() if r["round"] == 2)
    assert row2["selected"] == len(fed.client_ids) - len(victims) and row2["absorbed"] == row2["selected"]
    # the killed gateways come back on the store and model they had
    counts = {}
    for v in victims:
        with SampleStore(fed.store(v)) as store:
            assert store.check()
            counts[v] = store.count()
        assert (fed.store(v).parent / "client_state.safetensors").exists()  # its model after round 0
        fed.start_client(v, fill_store=False)
    fed.run_to_end()
    rows = assert_every_round_once(fed)
    rejoined = [r["round"] for r in rows if r["round"] > 2 and r["absorbed"] == len(fed.client_ids)]
    print(f"killed clients {victims} rejoined from round {rejoined[0] if rejoined else None} of {fed.rounds}")
    assert rejoined, f"the restarted clients never contributed again: {[(r['round'], r['absorbed']) for r in rows]}"
    lost_samples = 0
    for v in victims:
        log = fed.log(v)
        assert "resumed local model after round" in log, log[-2000:]
        with SampleStore(fed.store(v)) as store:
            lost_samples += counts[v] - store.count()
    record("fault", "30 % of selected clients SIGKILLed mid-round", tried=len(victims), handled=len(victims))
    record("fault", "client restarted: resumes store and model, rejoins", tried=len(victims), handled=len(victims),
           lost=lost_samples)
    assert lost_samples == 0  # nothing lost from the local stores
    record("fault", "rounds completed after client kills", tried=1, handled=1,
           lost=fed.rounds - len(rows))


def test_broker_killed_and_restarted_mid_run(federation):
    fed = federation(rounds=6, clients=(1, 1, 1), per_round=3, round_timeout=30.0)
    fed.start_all()
    fed.wait_round_done(1)
    fed.wait_announced(2)
    lost = "disconnected from broker"
    parties = ["aggregator", *fed.client_ids]
    before = {p: fed.log(p).count(lost) for p in parties}
    fed.broker.kill()
    # everybody notices the broker is gone and starts backing off; uploads go into the void
    fed.wait_until(lambda: all(fed.log(p).count(lost) > before[p] for p in parties), 60,
                   "every party to notice the broker is gone")
    fed.broker.restart()
    fed.run_to_end(timeout=400)
    rows = assert_every_round_once(fed)
    short = [r["round"] for r in rows if r["absorbed"] < r["selected"]]
    assert short == [], f"rounds closed without every upload: {short}"  # the lost ones were asked for again
    assert fed.final_probe() == pytest.approx(fed.inprocess_probe(), abs=1e-9)  # re-sent = the ones trained
    reconnects = sum(fed.log(c).count("disconnected from broker") for c in fed.client_ids)
    assert reconnects >= len(fed.client_ids)  # every client really lost the broker and came back by itself
    record("fault", "broker SIGKILLed and restarted mid-run", lost=fed.rounds - len(rows))


def _deafen(fed: ProcessFederation, client_id: str) -> None:
    """Take ``client_id``'s read rights on the live ``rounds`` and ``global/`` topics out of the broker's ACL
    and reload it: the broker delivers neither to it (as a busy cluster node dropping them would); its
    ``reply/`` topics still reach it."""
    acl = fed.secure.broker_dir / "acl"
    lines, block = [], None
    for line in acl.read_text().splitlines():
        block = line.split()[1] if line.startswith("user ") else (None if not line else block)
        if block == client_id and line in (f"topic read fedmekt/{fed.federation}/rounds",
                                           f"topic read fedmekt/{fed.federation}/global/#"):
            continue
        lines.append(line)
    acl.write_text("\n".join(lines) + "\n")
    fed.broker.reload()  # mosquitto re-reads its ACL

    def reloaded() -> bool:
        """A live plan, then a reply, from the aggregator's login to the deafened one's (neither runs yet): the
        reply arriving alone proves the broker applies the new ACL (it delivers in order, and grants any
        subscription)."""
        sb, rounds = fed.secure, f"fedmekt/{fed.federation}/rounds"
        reply = f"fedmekt/{fed.federation}/clients/{client_id}/reply/probe"
        deaf = connect(sb.port, client_id, sb.passwords[client_id], ca=sb.ca, client_id=client_id)
        agg = connect(sb.port, "aggregator", sb.passwords["aggregator"], ca=sb.ca, client_id="aggregator")
        try:
            deaf.subscribe(rounds)
            deaf.subscribe(reply)
            agg.publish(rounds, b"probe")
            agg.publish(reply, b"probe")
            assert deaf.wait_for(reply, timeout=10), "the probe's reply never arrived"
            return all(t != rounds for t, _ in deaf.drain())
        finally:
            deaf.close()
            agg.close()

    wait_for(reloaded, 30, f"mosquitto to reload the ACL that deafens {client_id}", every=0.2)


def test_client_that_never_hears_the_live_rounds_still_trains_every_round(federation):
    """One client never gets an announcement or global knowledge as published: each round the aggregator,
    hearing no upload for a while, asks it on ``reply/resend`` (the signed announcement), its sync request
    brings the knowledge, and every round ends with every upload, bit for bit as the undisturbed run."""
    fed = federation(rounds=2, clients=(1, 1, 1), per_round=3, round_timeout=60.0, secure=True)
    deaf = fed.client_ids[1]
    _deafen(fed, deaf)
    fed.start_all("--resend-after", "3")
    assert fed.wait_exit("aggregator", 300) == 0, fed.log("aggregator")[-3000:]
    for cid in fed.client_ids:
        if cid != deaf:
            assert fed.wait_exit(cid, 60) == 0, fed.log(cid)[-3000:]
    fed.kill(deaf)  # the run's "done" is an announcement too: it waits for the next run, as a daemon would
    rows = assert_every_round_once(fed)
    assert [r["absorbed"] for r in rows] == [r["selected"] for r in rows] == [len(fed.client_ids)] * fed.rounds
    assert "asking 1 clients for their uploads" in fed.log("aggregator")  # only the ask brought it a round
    assert [f"round {r + 1} trained" in fed.log(deaf) for r in range(fed.rounds)] == [True] * fed.rounds
    assert fed.final_probe() == pytest.approx(fed.inprocess_probe(), abs=1e-9)
    record("fault", "client deaf to the live rounds and knowledge (ACL)", lost=fed.rounds - len(rows))


def test_aggregator_sigkilled_resumes_from_last_checkpoint(federation):
    from aggregator.checkpoint import CHECKPOINT
    from safetensors.numpy import load_file

    fed = federation(rounds=6, clients=(1, 1, 1), per_round=3, round_timeout=30.0)
    fed.start_all()
    fed.wait_round_done(2)
    fed.wait_announced(3)
    fed.kill("aggregator")
    state = load_file(str(fed.out / CHECKPOINT))  # complete and readable
    done_before = int(state["meta/rounds_completed"][0])
    rows_before = completed_rows(fed)
    assert done_before >= 3 and [r["round"] for r in rows_before] == list(range(done_before))
    fed.start_aggregator()
    fed.run_to_end(timeout=300)
    assert f"resuming from checkpoint: {done_before} of" in fed.log("aggregator")
    rows = assert_every_round_once(fed)
    assert rows[:done_before] == rows_before  # completed rounds kept exactly, not redone
    record("fault", "aggregator SIGKILLed mid-run, restarted", lost=fed.rounds - len(rows))


WRITER = """
import sys, numpy as np
from pathlib import Path
from aggregator.checkpoint import save_checkpoint
out = Path(sys.argv[1]); i = 0
rng = np.random.default_rng(0)
big = rng.standard_normal(4_000_000).astype(np.float32)  # 16 MiB: a write takes a while
while True:
    state = {"w": big + i, "meta/rounds_completed": np.array([i + 1], np.int64)}
    save_checkpoint(out, state, {"k": 1}, [{"round": r} for r in range(i + 1)], "run-1")
    print(i, flush=True); i += 1
"""


def test_checkpoint_is_never_half_written_under_sigkill(tmp_path):
    """SIGKILL a process that rewrites a 16 MiB checkpoint in a loop, at random moments, 12 times."""
    from aggregator.checkpoint import load_checkpoint

    big = np.random.default_rng(0).standard_normal(4_000_000).astype(np.float32)
    rng = np.random.default_rng(1)
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout.readline(), "the checkpoint writer died"  # at least one complete checkpoint exists
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        kills += 1
        state, rows, run = load_checkpoint(tmp_path, {"k": 1})
        assert run == "run-1"
        done = int(state["meta/rounds_completed"][0])
        np.testing.assert_array_equal(state["w"], big + np.float32(done - 1))  # complete, one consistent write
        assert [r["round"] for r in rows] == list(range(done))  # metrics never ahead of the state
    record("fault", "SIGKILL while writing the checkpoint", tried=kills, handled=kills)
