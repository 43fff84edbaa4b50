"""A client that hears nothing while it follows no run subscribes afresh and asks again (edge_client/sync.py),
through a real mosquitto: a cluster node can acknowledge a subscription and then deliver nothing on it."""

from __future__ import annotations

import time

import pytest

import edge_client.sync as sync_module
from edge_client.sync import SyncClient
from fedmekt.mqtt import LinkOptions, MqttLink
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics

pytestmark = pytest.mark.broker
T = Topics("t")


def _drive(url: str, unserved: bool, seconds: float) -> tuple[int, int]:
    """(sync requests the aggregator's side saw, retained copies the client got) over ``seconds``."""
    with MqttLink(url, LinkOptions(client_id="listener"), subscriptions=[T.sync("c1")]).connect() as listener, \
            MqttLink(url, LinkOptions(client_id="writer")).connect() as writer:
        writer.publish_all([(T.rounds, b"retained plan")], retain=True)
        client = SyncClient(T, "c1", SyncRequest, unserved=lambda: unserved)
        copies = 0
        with MqttLink(url, LinkOptions(client_id="c1"), subscriptions=[client.subscription, T.rounds]).connect() as link:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                msg = link.get(timeout=0.05)
                if msg is not None:
                    copies += client.unwrap(msg).retain
                client.step(link)
        time.sleep(0.5)  # the last request reaches the listener
        requests = 0
        while (msg := listener.get(timeout=0.1)) is not None:
            requests += msg.topic == T.sync("c1")
        return requests, copies


def test_unserved_client_subscribes_afresh_and_asks_again(mosquitto, monkeypatch):
    monkeypatch.setattr(sync_module, "DEAF", 0.6)
    monkeypatch.setattr(sync_module, "GRACE", 0.1)
    requests, copies = _drive(mosquitto.url, unserved=True, seconds=4.0)
    assert requests >= 3, requests  # the first one, then again after every quiet spell
    assert copies >= 2, copies  # each fresh subscription brought the retained message again: really renewed


def test_a_client_that_follows_a_run_does_not(mosquitto, monkeypatch):
    monkeypatch.setattr(sync_module, "DEAF", 0.6)
    monkeypatch.setattr(sync_module, "GRACE", 0.1)
    requests, copies = _drive(mosquitto.url, unserved=False, seconds=3.0)
    assert (requests, copies) == (1, 1)
