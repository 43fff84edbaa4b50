"""A stolen device login against selection (issue 21 §3), each through a real mosquitto with real processes.

* heartbeater: a login that echoes every liveness challenge and never uploads is selected less (backoff, with
  the reason in the round's metrics row), and rounds without it close on their uploads;
* min-clients: a live status echoing a nonce this aggregator never issued does not count towards --min-clients;
* queued: a status published while the aggregator was down, queued in its saved session and delivered after
  its restart, is not taken as live.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import paho.mqtt.client as mqtt
import pytest

from fault_ledger import record
from federation_harness import ProcessFederation
from fedmekt.wire import manifest as fedwire

pytestmark = [pytest.mark.slow, pytest.mark.broker]
NEVER_ISSUED = "0" * 32


class StolenLogin:
    """What a thief with a device's login does: follow the liveness challenge and publish live "online"
    statuses every 0.3 s, echoing the newest challenge (``proof=None``; none before one came, as a gateway
    of an older release) or a fixed nonce; never upload."""

    def __init__(self, fed: ProcessFederation, cid: str, proof: str | None = None):
        self.fed, self.cid, self.proof, self.challenges = fed, cid, proof, []
        self.stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"thief-{cid}")
        self.client.on_message = lambda c, u, msg: msg.payload and self.challenges.append(
            fedwire.LivenessChallenge.from_bytes(msg.payload).nonce)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"fedmekt/{fed.federation}/liveness", qos=1)
        self.client.connect("127.0.0.1", fed.broker.port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def status(self, proof: str) -> bytes:
        return fedwire.Status("online", ("acce", "gyro"), proof=proof).to_bytes()

    def _beat(self) -> None:
        topic = f"fedmekt/{self.fed.federation}/clients/{self.cid}/status"
        while not self.stop.wait(0.3):
            proof = self.proof if self.proof is not None else (self.challenges[-1] if self.challenges else "")
            self.client.publish(topic, self.status(proof), qos=1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def plans(fed: ProcessFederation) -> dict[int, list[str]]:
    return {a["plan"]["round"]: a["plan"]["selected"] for a in fed.announcements() if a.get("plan")}


def rows_of(fed: ProcessFederation) -> list[dict]:
    return [json.loads(line) for line in (fed.out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_heartbeater_that_never_uploads_is_selected_less(federation):
    fed = federation(rounds=6, clients=(1, 1, 2), per_round=3, round_timeout=12.0)
    real, thief = fed.client_ids[:3], fed.client_ids[3]
    stolen = StolenLogin(fed, thief)
    try:
        for cid in real:
            fed.start_client(cid)
        fed.start_aggregator()  # waits for all 4: the thief's echoed challenge is fresh proof of life
        fed.run_to_end(timeout=400)
    finally:
        stolen.close()
    rows, chosen = rows_of(fed), plans(fed)
    assert [r["round"] for r in rows] == list(range(fed.rounds))
    picked = [r for r in range(fed.rounds) if thief in chosen[r]]
    assert picked, f"the seed never drew {thief}: the test shows nothing ({chosen})"
    for r in picked:  # each time it is selected it misses, and sits out the rounds that follow
        assert r + 1 not in picked, f"{thief} sent no upload in round {r + 1} and was selected again: {chosen}"
        assert thief in rows[r]["missed"], rows[r]
        k, until = rows[r]["backoff"][thief]
        assert until >= r + 2 ** (k - 1) + 1
        for later in range(r + 1, min(until, fed.rounds)):
            assert thief not in chosen[later], (later, chosen)
            assert "no upload" in rows[later]["benched"][thief], rows[later]
    assert all(r["absorbed"] == len([c for c in chosen[r["round"]] if c != thief]) for r in rows), rows
    misses = [rows[r]["backoff"][thief][0] for r in picked]
    assert misses == list(range(1, len(picked) + 1))  # escalating: 1, 2, 4 … rounds out
    assert len(picked) < fed.rounds - 2, chosen  # without backoff it is drawn in ~3 of 4 rounds
    assert f"{thief} selected, online and no upload" in fed.log("aggregator")
    record("attack", "heartbeater: a login that heartbeats and never uploads", tried=fed.rounds,
           handled=fed.rounds - len(picked))


def test_min_clients_counts_only_fresh_proof(federation):
    fed = federation(rounds=2, clients=(1, 1, 1), per_round=3, round_timeout=60.0)
    real, thief = fed.client_ids[:2], fed.client_ids[2]
    stolen = StolenLogin(fed, thief, proof=NEVER_ISSUED)  # a status replayed from another session
    try:
        for cid in real:
            fed.start_client(cid)
        fed.start_aggregator("--wait-clients", "2", "--min-clients", "3", "--wait-timeout", "5")
        fed.run_to_end(timeout=300)
    finally:
        stolen.close()
    log = fed.log("aggregator")
    assert all(thief not in sel for sel in plans(fed).values()), plans(fed)
    assert [(r["selected"], r["absorbed"]) for r in rows_of(fed)] == [(2, 2), (2, 2)]
    assert "2 of 3 clients online before round 1" in log, log[-3000:]
    assert f"a live status of {thief} echoes no liveness challenge that this aggregator honours" in log  # handled
    record("attack", "min-clients: a status with a never-issued nonce", tried=1, handled=1)


def test_a_status_queued_while_the_aggregator_was_down_is_not_live(federation):
    fed = federation(rounds=1, clients=(1, 1, 1), per_round=3, round_timeout=60.0)
    real, absent = fed.client_ids[:2], fed.client_ids[2]
    for cid in real:
        fed.start_client(cid)
    fed.start_aggregator()  # waits for all 3
    fed.wait_until(lambda: "waiting for 3 clients (2 online)" in fed.log("aggregator"), 120,
                   "the aggregator to see the 2 running gateways")
    challenges = [p for _, t, p in fed.recorder.snapshot() if t == f"fedmekt/{fed.federation}/liveness" and p]
    last = fedwire.LivenessChallenge.from_bytes(challenges[-1]).nonce if challenges else ""  # the freshest proof
    os.killpg(fed.procs["aggregator"].pid, signal.SIGKILL)
    fed.procs["aggregator"].wait()
    fed.killed.add(fed.procs["aggregator"])
    # while it is down: a live status of the absent gateway, queued in the aggregator's saved session
    fed.recorder.client.publish(f"fedmekt/{fed.federation}/clients/{absent}/status",
                                fedwire.Status("online", ("acce", "gyro"), proof=last).to_bytes(),
                                qos=1).wait_for_publish()
    fed.start_aggregator()
    fed.wait_until(lambda: f"a live status of {absent} echoes no liveness challenge" in fed.log("aggregator"), 120,
                   "the restarted aggregator to receive the queued status")
    fed.wait_until(lambda: "waiting for 3 clients (2 online)" in fed.log("aggregator"), 120,
                   "the restarted aggregator to see the 2 running gateways")
    assert " opens: " not in fed.log("aggregator"), fed.log("aggregator")[-3000:]
    record("attack", "queued: a status queued in the aggregator's session while it was down", tried=1, handled=1)
