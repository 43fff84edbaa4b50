"""What a device says never acts on the operator's terminal or fakes a line of output.

A device (any login that may publish on its own topics) sends ESC/BEL sequences and newlines in its
status and in metrics it could forge (mosquitto refuses control characters in topics themselves); ``fedmekt status`` through a real mosquitto shows them
escaped, and the CLI's log lines do the same.
"""

from __future__ import annotations

import logging
import re
import subprocess

import paho.mqtt.client as mqtt
import pytest

from federation_harness import _cmd
from fedmekt.printable import PrintableFormatter, printable

pytestmark = pytest.mark.broker
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
TITLE = "\x1b]0;owned\x07"
FAKE = "\n  c000: online"


def _publish_retained(port: int, messages: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hostile-device")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, payload in messages:
            c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def test_status_shows_device_controls_escaped(mosquitto):
    base = "fedmekt/demo"
    _publish_retained(mosquitto.port, [
        (f"{base}/clients/c001/status", b'{"state": "online", "modalities": ["acce"]}'),
        (f"{base}/clients/c002/status",
         ('{"state": "online", "modalities": ["acce%s%s"]}' % (TITLE, FAKE)).encode().replace(b"\n", b"\\n")
         .replace(b"\x1b", b"\\u001b").replace(b"\x07", b"\\u0007")),
        (f"{base}/metrics", ('{"run": "r%s\\u001b[2J%s", "round": 0}' % ("\\u0007", "\\n  c000: online")).encode()),
    ])
    done = subprocess.run(_cmd() + ["status", "--broker", mosquitto.url, "--wait", "3"],
                          capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert "c001: online (acce)" in out and "last round done: 1 of run ?" in out, out  # every message was read
    # (proof): the round row's run name with controls is refused as a run name, shown as "?"
    assert not CONTROLS.search(out.replace("\n", "")), repr(out)       # no control reached the terminal
    assert not any(line.strip().startswith("c000") for line in out.splitlines()), out   # no faked line
    assert "c002" not in re.findall(r"^  (\S+): online", out, flags=re.M)  # its bad modalities are refused


def test_log_lines_escape_what_they_quote():
    record = logging.LogRecord("fedmekt.aggregator", logging.WARNING, "", 0, "upload from %s refused",
                               (TITLE + FAKE,), None)
    line = PrintableFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING upload from \\x1b]0;owned\\x07\\x0a  c000: online refused"
    assert printable("c000") == "c000" and printable("x" * 10, limit=4) == "xxxx…"
