"""Pi-class gateway envelope: ``fedmekt client`` pinned to one core on the bundled demo data.

    .venv/bin/python bench/bench_gateway.py [--rounds 5] [--idle-seconds 20] [--core 0] [--device-class small]

Starts a mosquitto on a free port, an aggregator (``fedmekt aggregator``, pinned to another core
when there is one) of a demo federation that selects the one gateway every round, and the gateway
``taskset -c CORE fedmekt client --source split:…`` (its partition of the demo split, as ``simulate``
feeds its clients). Measured from /proc of the client process: peak RSS (VmHWM) over the whole
run, CPU seconds per round, wall time per round (intervals of the aggregator's per-round metrics,
so it includes the server update), and CPU while idle after the run (it waits for the next run
exactly as between rounds: MQTT loop and heartbeat). The run is signed; its final package then
serves a receive-only gateway (``fedmekt client --infer-only``, in a process where torch cannot be
imported, on the same core) classifying ``replay:demo`` in real time: its peak RSS and CPU.
Prints each figure beside its goal. ``--device-class`` runs a federation of that one class (its encoder
width, fedmekt/device_classes.py) and both gateways declare it: run it once per class to compare them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.package import generate_keypair  # noqa: E402
from fedmekt.device_classes import CLASSES, DEFAULT, hidden_for  # noqa: E402
from fedmekt.transport.broker import start_mosquitto  # noqa: E402
from fedmekt.transport.mqtt import LinkOptions, MqttLink  # noqa: E402
from fedmekt.wire.topics import Topics  # noqa: E402

FED = "bench-gateway"
GOAL_RSS_MIB, GOAL_IDLE_CPU = 381.0, 1.0  # the 400 MB (10^6 B) in MiB, the unit we print
TICK = os.sysconf("SC_CLK_TCK")
NO_TORCH = "import sys; sys.modules['torch'] = None; from fedmekt_cli.main import main; sys.exit(main())"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class RssSampler(threading.Thread):
    """The highest VmRSS seen while ``active`` is set (sampled every 50 ms): the peak while training."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.active, self.stop = pid, 0.0, threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            if self.active.is_set():
                try:
                    self.peak = max(self.peak, rss_mib(self.pid))
                except (OSError, RuntimeError):
                    return


def pinned(core: int | None, argv: list[str]) -> list[str]:
    return argv if core is None or not shutil.which("taskset") else ["taskset", "-c", str(core), *argv]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--core", type=int, default=0, help="the gateway's core (default 0)")
    ap.add_argument("--infer-seconds", type=float, default=15.0, help="real-time inference measured (default 15)")
    ap.add_argument("--device-class", choices=CLASSES, default=DEFAULT,
                    help=f"the gateways' device class, and the federation's only one (default {DEFAULT})")
    args = ap.parse_args()
    fedmekt = str(Path(sys.executable).parent / "fedmekt")
    other = 1 if (os.cpu_count() or 1) > 1 and args.core != 1 else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    config = tmp / "federation.toml"
    # the demo federation's split (9 clients) with one of them online and selected every round
    config.write_text(f'federation = "{FED}"\ndataset = "demo"\nclients = [3, 3, 3]\nper_round = 1\n'
                      f'rounds = {args.rounds}\nfleet = "{args.device_class}"\n')
    broker = start_mosquitto(workdir=tmp / "mosquitto")
    key, pub = tmp / "agg.key", tmp / "agg.pub"
    generate_keypair(key, pub)
    topics = Topics(FED)
    monitor = MqttLink(broker.url, LinkOptions(client_id="bench-monitor"),
                       subscriptions=[topics.metrics, topics.rounds]).connect()
    procs: list[subprocess.Popen] = []
    try:
        agg = subprocess.Popen(pinned(other, [fedmekt, "aggregator", "--broker", broker.url, "--config", str(config),
                                              "--out", str(tmp / "agg"), "--no-progress", "--wait-clients", "1",
                                              "--signing-key", str(key), "--package-every", "0"]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = subprocess.Popen(pinned(args.core, [fedmekt, "client", "--broker", broker.url, "--client-id", "c008",
                                                     "--federation", FED, "--source", f"split:{config}",
                                                     "--public-key", str(pub), "--device-class", args.device_class,
                                                     "--store", str(tmp / "c008" / "store.sqlite")]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs += [agg, client]
        sampler = RssSampler(client.pid)
        sampler.start()
        arrivals: list[tuple[float, float]] = []  # (wall time, client CPU seconds) at each round's metrics
        deadline = time.monotonic() + 60 * 60
        while len(arrivals) < args.rounds:
            if client.poll() is not None or agg.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"federation stopped early: client rc {client.poll()}, aggregator rc {agg.poll()}\n"
                                 f"{client.stderr.read()[-2000:] if client.poll() is not None else ''}")
            msg = monitor.get(timeout=0.5)
            if msg is not None and msg.topic == topics.rounds:
                sampler.active.set()  # round 0 announced: training from now on (startup loads the whole split)
            elif msg is not None and msg.payload and not msg.retain:
                row = json.loads(msg.payload)
                arrivals.append((time.monotonic(), cpu_seconds(client.pid)))
                print(f"round {row.get('round')}: client CPU {arrivals[-1][1]:.1f} s so far, RSS "
                      f"{rss_mib(client.pid):.0f} MiB", flush=True)
        sampler.active.clear()
        agg.wait(timeout=600)
        time.sleep(2.0)  # the last "done" handled; the client now waits for a next run
        c0, t0 = cpu_seconds(client.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle = 100.0 * (cpu_seconds(client.pid) - c0) / (time.monotonic() - t0)
        rss = peak_rss_mib(client.pid)
        walls = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
        cpus = [b[1] - a[1] for a, b in zip(arrivals, arrivals[1:])]
        client.terminate()
        client.wait(20)
        infer_rss, infer_cpu, rate = infer_only(args, broker.url, pub, tmp, monitor, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        monitor.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    pin = f"taskset -c {args.core}" if shutil.which("taskset") else "not pinned (no taskset)"
    print(f"\nfedmekt client --device-class {args.device_class} (hidden {hidden_for(32, args.device_class)}) on the "
          f"demo split, {pin}, {args.rounds} rounds of FedMEKT-C (machine: "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print(f"{'figure':<34}{'measured':>12}{'goal':>12}")
    print(f"{'peak RSS while training (MiB)':<34}{sampler.peak:>12.0f}{f'<= {GOAL_RSS_MIB:.0f}':>12}")
    print(f"{'peak RSS of the process (MiB)':<34}{rss:>12.0f}{'-':>12}")
    print(f"{'wall time per round (s, median)':<34}{statistics.median(walls):>12.2f}{'-':>12}")
    print(f"{'client CPU per round (s, median)':<34}{statistics.median(cpus):>12.2f}{'-':>12}")
    print(f"{'idle CPU between rounds (%)':<34}{idle:>12.2f}{f'< {GOAL_IDLE_CPU:.0f}':>12}")
    print(f"\nfedmekt client --infer-only (no torch), {pin}, replay:demo at real time ({rate:.1f} predictions/s)")
    print(f"{'peak RSS (MiB)':<34}{infer_rss:>12.0f}{'-':>12}")
    print(f"{'CPU while classifying (%)':<34}{infer_cpu:>12.2f}{'-':>12}")
    return 0


def infer_only(args, url: str, pub: Path, tmp: Path, monitor: MqttLink, procs: list) -> tuple[float, float, float]:
    """Peak RSS, CPU % and predictions per second of a receive-only gateway serving the run's package."""
    topic = Topics(FED).inference("gw-infer")
    monitor.subscribe(topic)
    gw = subprocess.Popen(pinned(args.core, [sys.executable, "-c", NO_TORCH, "client", "--infer-only",
                                             "--device-class", args.device_class, "--broker", url,
                                             "--client-id", "gw-infer", "--federation", FED, "--public-key", str(pub),
                                             "--source", "replay:demo", "--speed", "1",
                                             "--store", str(tmp / "gw-infer" / "store.sqlite")]),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs.append(gw)
    deadline = time.monotonic() + 300
    while True:  # the first prediction: the package is installed and the source flows
        if gw.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"inference-only gateway: rc {gw.poll()}\n{gw.stderr.read()[-2000:] if gw.poll() else ''}")
        msg = monitor.get(timeout=0.5)
        if msg is not None and msg.topic == topic:
            break
    c0, t0, n = cpu_seconds(gw.pid), time.monotonic(), 0
    while time.monotonic() - t0 < args.infer_seconds:
        msg = monitor.get(timeout=0.2)
        n += msg is not None and msg.topic == topic
    wall = time.monotonic() - t0
    return peak_rss_mib(gw.pid), 100.0 * (cpu_seconds(gw.pid) - c0) / wall, n / wall


if __name__ == "__main__":
    sys.exit(main())
