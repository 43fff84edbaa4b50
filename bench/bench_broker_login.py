"""Cost of a login on the secured broker: PBKDF2 at mosquitto_passwd's 101 iterations, ours, and 100 000.

Provisions a TLS mosquitto with ``fedmekt provision`` (three device logins), rewrites two logins'
hashes with 101 and 100 000 iterations, and times TLS connect + CONNACK for each, side by side::

    .venv/bin/python bench/bench_broker_login.py [--connects 30]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from fedmekt.transport.broker import free_port, start_mosquitto
from fedmekt.provisioning import registry
from fedmekt.provisioning.passwords import ITERATIONS, hash_line


def connect_seconds(port: int, ca: Path, user: str, password: str) -> float:
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    client.on_connect = lambda c, u, f, rc, p: done.set() if rc == 0 else None
    start = time.perf_counter()
    client.connect("localhost", port)
    client.loop_start()
    if not done.wait(10):
        raise RuntimeError(f"{user} could not log in")
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        op, port = Path(tmp) / "operator", free_port()
        dep = registry.init(op, ("localhost",), port=port)
        passwords = {}
        counts = {"legacy": 101, "ours": ITERATIONS, "heavy": 100_000}
        for user in counts:
            bundle = registry.add(op, user, "device", ("bench",))
            passwords[user] = json.loads((bundle / "credentials.json").read_text())["password"]
        passwd = dep.broker_dir / "passwd"
        lines = [hash_line(user, passwords[user], counts[user])
                 for user in (line.split(":", 1)[0] for line in passwd.read_text().splitlines())]
        passwd.write_text("\n".join(lines) + "\n")
        stay = "user root\n" if os.geteuid() == 0 else ""
        broker = start_mosquitto(port=port, listener=(dep.broker_dir / "fedmekt.conf").read_text(),
                                 workdir=Path(tmp) / "mosquitto", extra_config=stay)
        try:
            broker.reload()
            time.sleep(0.5)
            times = {user: [] for user in passwords}
            for _ in range(args.connects):  # interleaved, so machine load hits both alike
                for user in passwords:
                    times[user].append(connect_seconds(port, op / "ca.crt", user, passwords[user]))
        finally:
            broker.stop()
    legacy = statistics.median(times["legacy"]) * 1000
    print(f"TLS connect + CONNACK, median of {args.connects} per login (interleaved):")
    for user, what in (("legacy", "mosquitto_passwd"), ("ours", "fedmekt provision"), ("heavy", "")):
        ms = statistics.median(times[user]) * 1000
        print(f"  {counts[user]:>7} iterations {what:<18} {ms:7.1f} ms  ({ms - legacy:+.1f} ms vs 101)")


if __name__ == "__main__":
    main()
