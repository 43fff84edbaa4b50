"""Gateways spread their answers to a new liveness challenge over the window the challenge names, so a new
nonce (one per round) is not a burst of the whole fleet's statuses, and the answers still come before
selection needs them (aggregator/presence.py, edge_client/agent.py). Through a real mosquitto."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from aggregator.presence import answer_spread
from edge_client.agent import AgentOptions, EdgeAgent
from fedmekt.transport.mqtt import LinkOptions
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.signing import unwrap
from sensors.store import SampleStore
from tests.core_support import tiny_split
from wait_support import wait_for

FED = "spread"


def test_the_window_scales_with_the_fleet_and_stays_within_the_proofs_life():
    assert answer_spread(3, 500.0, 120.0, None) == 0.006  # a small federation: as good as at once
    assert answer_spread(10_000, 500.0, 120.0, None) == 20.0  # 10,000 gateways: 500 answers/s
    assert answer_spread(100_000, 500.0, 120.0, None) == 30.0  # never beyond a quarter of a proof's life
    assert answer_spread(10_000, 500.0, 120.0, 12.5) == 12.5  # nor beyond the last round: needed two rounds on
    assert answer_spread(10_000, 0.0, 120.0, 12.5) == answer_spread(0, 500.0, 120.0, None) == 0.0


class Answers:
    """A subscriber recording when each live status arrives: (monotonic receive time, client, nonce echoed)."""

    def __init__(self, port: int):
        self.got: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="answers")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"fedmekt/{FED}/clients/+/status", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.retain or not msg.payload:
            return
        status = fedwire.Status.from_bytes(msg.payload)
        with self.lock:
            self.got.append((time.monotonic(), msg.topic.split("/")[3], status.proof))

    def to(self, nonce: str) -> dict[str, float]:
        """Client -> when its first answer to ``nonce`` arrived."""
        with self.lock:
            firsts: dict[str, float] = {}
            for at, cid, proof in self.got:
                if proof == nonce:
                    firsts.setdefault(cid, at)
            return firsts


@pytest.mark.broker
def test_gateways_spread_their_answers_to_a_new_challenge(mosquitto, tmp_path):
    """Eight gateways hear one challenge asking for a 3 s spread: their answers, timed at a subscriber, come
    within the window and not all at once (before the spread they all came within milliseconds)."""
    n, spread = 8, 3.0
    answers = Answers(mosquitto.port)
    stop = threading.Event()
    channels = tiny_split().channels
    stores = [SampleStore(tmp_path / f"c{i}.sqlite", channels=channels) for i in range(n)]
    agents = [EdgeAgent(mosquitto.url, AgentOptions(f"c{i:03d}", FED, store, tmp_path / f"state{i}", heartbeat=60.0,
                                                     link=LinkOptions(client_id=f"c{i:03d}")))
              for i, store in enumerate(stores)]
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    issuer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="issuer")
    try:
        assert answers.subscribed.wait(30), "the subscriber's subscription was not acknowledged"
        for t in threads:
            t.start()
        issuer.connect("127.0.0.1", mosquitto.port)
        issuer.loop_start()

        def challenge(nonce: str, window: float) -> float:
            issuer.publish(f"fedmekt/{FED}/liveness", fedwire.LivenessChallenge(FED, nonce, window).to_bytes(),
                           qos=1, retain=True).wait_for_publish(30)
            return time.monotonic()

        first, second = "a" * 32, "b" * 32
        challenge(first, 0.0)  # every gateway listening, at once
        wait_for(lambda: len(answers.to(first)) == n, 60, f"all {n} gateways to answer the first challenge",
                 detail=lambda: f"answered: {sorted(answers.to(first))}")
        issued = challenge(second, spread)
        times = wait_for(lambda: len(got := answers.to(second)) == n and got, 30,
                         f"all {n} gateways to answer the second challenge",
                         detail=lambda: f"answered: {sorted(answers.to(second))}")
        delays = sorted(at - issued for at in times.values())
        assert delays[-1] <= spread + 3.0, delays  # within the window (and the agents' loop, on a busy machine)
        assert delays[-1] - delays[0] >= 0.5, delays  # spread out: 8 uniform draws over 3 s, P(range < 0.5) ~ 3e-5
        assert all(a.link is not None and a.link.connected for a in agents)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for store in stores:
            store.close()
        issuer.loop_stop()
        answers.client.loop_stop()


@pytest.mark.slow
@pytest.mark.broker
def test_spread_answers_still_reach_every_selection(federation):
    """An aggregator asking for 1 answer/s (3 gateways: a 3 s window, capped by the last round's duration)
    still selects, and hears from, all three gateways in every round: the answers came before they were needed."""
    fed = federation(rounds=4, clients=(1, 1, 1), per_round=3, round_timeout=60.0)
    for cid in fed.client_ids:
        fed.start_client(cid)
    fed.start_aggregator("--answer-rate", "1")
    fed.run_to_end(timeout=300)
    rows = [json.loads(line) for line in (fed.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [(r["round"], r["selected"], r["absorbed"]) for r in rows] == [(r, 3, 3) for r in range(4)], rows
    spreads = [fedwire.LivenessChallenge.from_bytes(unwrap(p)).spread for _, t, p in fed.recorder.snapshot()
               if t == f"fedmekt/{fed.federation}/liveness" and p]
    assert any(s > 0 for s in spreads) and max(spreads) <= 3.0, spreads
