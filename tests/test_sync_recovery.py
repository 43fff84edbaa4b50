"""A client that hears nothing while it follows no run subscribes afresh and asks again (edge_client/sync.py),
through a real mosquitto: a cluster node can acknowledge a subscription and then deliver nothing on it."""

from __future__ import annotations

import time

import pytest

import edge_client.sync as sync_module
from edge_client.sync import SyncClient
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics
from wait_support import wait_for

pytestmark = pytest.mark.broker
T = Topics("t")


def _drive(url: str, unserved: bool, enough, what: str) -> tuple[int, int]:
    """(sync requests the aggregator's side saw, retained copies the client got), driving the client until
    ``enough(requests sent, copies, seconds driven)``."""
    with MqttLink(url, LinkOptions(client_id="listener"), subscriptions=[T.sync("c1")]).connect() as listener, \
            MqttLink(url, LinkOptions(client_id="writer")).connect() as writer:
        writer.publish_all([(T.rounds, b"retained plan")], retain=True)
        client = SyncClient(T, "c1", SyncRequest, unserved=lambda: unserved)
        copies = 0
        with MqttLink(url, LinkOptions(client_id="c1"), subscriptions=[client.subscription, T.rounds]).connect() as link:
            start = time.monotonic()

            def step() -> bool:
                nonlocal copies
                msg = link.get(timeout=0.05)
                if msg is not None:
                    copies += client.unwrap(msg).retain
                client.step(link)
                return enough(client.sent, copies, time.monotonic() - start)

            wait_for(step, 30, what, every=0, detail=lambda: f"{client.sent} requests sent, {copies} copies")
        requests = 0

        def every_request_in() -> bool:
            nonlocal requests
            while (msg := listener.get(timeout=0.05)) is not None:
                requests += msg.topic == T.sync("c1")
            return requests >= client.sent

        wait_for(every_request_in, 10, f"the listener to see the {client.sent} requests sent")
        return requests, copies


def test_unserved_client_subscribes_afresh_and_asks_again(mosquitto, monkeypatch):
    monkeypatch.setattr(sync_module, "DEAF", 0.6)
    monkeypatch.setattr(sync_module, "GRACE", 0.1)
    requests, copies = _drive(mosquitto.url, True, lambda sent, copies, _: sent >= 3 and copies >= 2,
                              "3 requests and 2 fresh subscriptions")
    assert requests >= 3, requests  # the first one, then again after every quiet spell
    assert copies >= 2, copies  # each fresh subscription brought the retained message again: really renewed


def test_a_client_that_follows_a_run_does_not(mosquitto, monkeypatch):
    monkeypatch.setattr(sync_module, "DEAF", 0.6)
    monkeypatch.setattr(sync_module, "GRACE", 0.1)
    # 3 s: an unserved client would have asked 3 times (after 0.6 s and 1.2 s of silence)
    requests, copies = _drive(mosquitto.url, False, lambda sent, copies, driven: driven >= 3.0, "3 s of driving")
    assert (requests, copies) == (1, 1)
