"""One login, one federation.

* Provisioning scopes a device or an aggregator login to exactly one federation: a second federation
  on one login meant two processes kicking each other off one MQTT session (the broker forces client
  id = username) and a saved session subscribed to both federations.
* The aggregator takes only its own federation's topics: a saved session left by another federation's
  run on the same login (a registry from before the rule, or an unsecured broker) delivers that
  federation's statuses and uploads, and none of them may count, through a real mosquitto.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.topics import Topics
from test_bad_input_aggregator import open_round, snapshot, upload_frames

pytestmark = pytest.mark.broker
FEDMEKT = Path(sys.executable).with_name("fedmekt")


def _provision(*args: str) -> subprocess.CompletedProcess:
    cmd = [str(FEDMEKT)] if FEDMEKT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    return subprocess.run(cmd + ["provision", *args], capture_output=True, text=True, timeout=120)


def test_provision_scopes_device_and_aggregator_logins_to_one_federation(tmp_path):
    op = str(tmp_path / "op")
    assert _provision("init", op, "--host", "localhost").returncode == 0
    for bad in (["add", op, "c000", "--federation", "demo", "--federation", "other"],
                ["add", op, "aggregator", "--role", "aggregator"],
                ["add", op, "aggregator", "--role", "aggregator", "--federation", "demo", "--federation", "other"]):
        done = _provision(*bad)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "serves one federation" in done.stderr, done.stderr
    for good in (["add", op, "c000", "--federation", "demo"],
                 ["add", op, "aggregator", "--role", "aggregator", "--federation", "demo"],
                 ["add", op, "aggregator-lab2", "--role", "aggregator", "--federation", "lab2"],
                 ["add", op, "ops", "--role", "monitor"]):
        done = _provision(*good)
        assert done.returncode == 0, done.stderr
    acl = (tmp_path / "op" / "broker" / "acl").read_text()
    assert "fedmekt/+/" not in acl.split("user ops")[0]      # only the monitor reads every federation


def test_aggregator_ignores_another_federations_statuses_and_uploads(mosquitto, tmp_path):
    """The session of login "aggregator" still subscribes to federation "other" (an earlier run); the demo
    aggregator gets other's status and an upload crafted for demo's open round, and counts neither."""
    other, demo = Topics("other"), Topics("demo")
    earlier = MqttLink(mosquitto.url, LinkOptions(client_id="aggregator"),
                       subscriptions=[other.status_all, other.uploads_all]).connect()
    earlier.close()                                               # its subscriptions stay in the saved session
    agg, plan = open_round(tmp_path)
    before = snapshot(agg)
    cid = plan.selected[0]
    with MqttLink(mosquitto.url, LinkOptions(client_id="aggregator"),
                  subscriptions=[demo.status_all, demo.uploads_all]).connect() as link, \
            MqttLink(mosquitto.url, LinkOptions(client_id="intruder")).connect() as intruder:
        agg.link = link
        online = fedwire.Status("online", ("acce", "gyro")).to_bytes()
        items = [(other.status("c-other"), online)]
        items += [(other.upload_chunk(cid, plan.round, i), f) for i, f in enumerate(upload_frames(agg, plan, cid, 1))]
        items.append((demo.status("c-sentinel"), online))        # ours, after them: proof they were handled
        intruder.publish_all(items)
        end = time.monotonic() + 30
        while "c-sentinel" not in agg.online:
            assert time.monotonic() < end, "demo's own status (sent last) not seen within 30 s"
            agg._pump(min(end, time.monotonic() + 0.2))
    assert "c-other" not in agg.online                           # another federation's presence
    assert cid not in agg._absorbed and snapshot(agg)[1] == before[1]   # nor its upload, crafted for demo
