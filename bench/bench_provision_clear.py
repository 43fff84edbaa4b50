"""``fedmekt provision clear`` on the issue-21 park: a device login leaves 400 retained messages of ~260 KiB on its
upload topics (more than the broker queues for one subscriber, 64 MiB), is revoked, and the janitor deletes them.

Provisions a TLS mosquitto with ``fedmekt provision``, parks with the device's own login, revokes it (remove +
SIGHUP), times ``registry.clear`` and counts what a new subscriber still gets::

    .venv/bin/python bench/bench_provision_clear.py [--count 400]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from fedmekt.provisioning import registry
from fedmekt.transport.broker import free_port, start_mosquitto

SIZE = 260 * 1024 - 256  # the broker's message_size_limit less room for the topic


def login(port: int, ca: Path, user: str, password: str) -> tuple[mqtt.Client, list]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, reconnect_on_failure=False)
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    got: list = []
    client.on_message = lambda c, u, msg: got.append((msg.topic, msg.retain))
    client.connect("localhost", port)
    client.loop_start()
    return client, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    op, port = tmp / "operator", free_port()
    dep = registry.init(op, ("localhost",), port=port, control_port=free_port(avoid=port))
    password = {}
    for name, role in (("monitor", "monitor"), ("c000", "device"), ("c001", "device")):
        bundle = registry.add(op, name, role, ("demo",) if role == "device" else ())
        password[name] = json.loads((bundle / "credentials.json").read_text())["password"]
    stay = "user root\n" if os.geteuid() == 0 else ""
    broker = start_mosquitto(port=port, listener=(dep.broker_dir / "fedmekt.conf").read_text(),
                             workdir=tmp / "mosquitto", extra_config=stay)
    try:
        device, _ = login(port, op / "ca.crt", "c000", password["c000"])
        start = time.perf_counter()
        infos = [device.publish(f"fedmekt/demo/clients/c000/upload/{i}/0", bytes(SIZE), qos=1, retain=True)
                 for i in range(args.count)]
        for info in infos:
            info.wait_for_publish(60)
        parked = time.perf_counter() - start
        device.disconnect()
        device.loop_stop()
        registry.remove(op, "c000")
        broker.reload()
        time.sleep(1.0)  # a benchmark, not a test: the reload takes milliseconds
        start = time.perf_counter()
        cleared = registry.clear(op, "c000")
        took = time.perf_counter() - start
        witness, _ = login(port, op / "ca.crt", "c001", password["c001"])
        witness.publish("fedmekt/demo/clients/c001/status", b"online", qos=1, retain=True).wait_for_publish(10)
        witness.disconnect()
        witness.loop_stop()
        fresh, got = login(port, op / "ca.crt", "monitor", password["monitor"])
        fresh.subscribe("fedmekt/demo/clients/c000/#", qos=1)
        fresh.subscribe("fedmekt/demo/clients/c001/status", qos=1)  # its retained copy comes after the first's
        deadline = time.monotonic() + 30
        while not any(t.endswith("c001/status") for t, _ in got) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = sum(1 for t, _ in got if "/c000/" in t)
        fresh.disconnect()
        fresh.loop_stop()
    finally:
        broker.stop()
    print(f"parked {args.count} x {SIZE / 1024:.0f} KiB retained in {parked:.1f} s; provision clear deleted {cleared} "
          f"in {took:.1f} s; a new subscriber then got {left} of them")


if __name__ == "__main__":
    main()
