"""A federation of real processes through a real mosquitto, for fault and privacy tests.

The aggregator and every client run as ``fedmekt aggregator`` / ``fedmekt client``
subprocesses (so they can be SIGKILLed like a crashed gateway), against either a plain
mosquitto or the shipped TLS + password + ACL configuration. A recorder subscribed to
``fedmekt/<federation>/#`` keeps every message with its arrival time.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from core_support import QUICK_HYPER_TOML
from fedmekt.transport.broker import MosquittoProcess, start_mosquitto
from fedmekt.wire.signing import unwrap
from security_support import SecureBroker, start_secure_broker
from wait_support import wait_for

SCRIPT = Path(sys.executable).with_name("fedmekt")
def faketime_lib() -> str | None:
    """libfaketime (Debian ``libfaketime``, multiarch path; ``make test`` installs it) or None."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + glob.glob("/usr/lib/faketime/libfaketime.so.1")
    return found[0] if found else None


def shifted_clock(offset: str) -> dict[str, str]:
    """Environment that runs a process with its wall clock shifted by ``offset`` (libfaketime syntax: "+1h",
    "-1d"). Its monotonic clock stays true, as on a device whose wall clock is simply wrong."""
    lib = faketime_lib()
    assert lib is not None, "libfaketime is not installed (apt-get install -y faketime libfaketime)"
    return {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _cmd() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "fedmekt_cli"]


@dataclass
class Recorder:
    """Every message on the federation's topics, in arrival order: (unix time, topic, payload)."""

    client: mqtt.Client
    messages: list[tuple[float, str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload)))

    def snapshot(self) -> list[tuple[float, str, bytes]]:
        with self.lock:
            return list(self.messages)


class ProcessFederation:
    """Config file, broker, recorder, and helpers to start / kill the parties."""

    def __init__(self, tmp: Path, *, rounds: int = 5, clients: tuple[int, int, int] = (2, 2, 2), per_round: int = 6,
                 round_timeout: float = 8.0, secure: bool = False, federation: str = "ft", seed: int = 0,
                 proxy_windows: int = 8, broker=None):
        self.tmp, self.rounds, self.round_timeout, self.federation = tmp, rounds, round_timeout, federation
        self.client_ids = [f"c{i:03d}" for i in range(sum(clients))]
        self.config = tmp / "federation.toml"
        self.config.write_text(
            f'federation = "{federation}"\ndataset = "demo"\nclients = {list(clients)}\nper_round = {per_round}\n'
            f'rounds = {rounds}\nproxy_windows = {proxy_windows}\nseed = {seed}\ndevice = "cpu"\n'
            + QUICK_HYPER_TOML)
        (tmp / "logs").mkdir(exist_ok=True)
        self.secure: SecureBroker | None = (start_secure_broker(tmp, tuple(self.client_ids), federation)
                                            if secure else None)
        # ``broker``: another engine already running (anything with url, port and stop(), e.g. a NATS cluster)
        self.broker: MosquittoProcess = broker or (self.secure.broker if secure else
                                                   start_mosquitto(workdir=tmp / "mosquitto"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}
        self.killed: set[subprocess.Popen] = set()  # killed on purpose: not a failure
        self.recorder = self._record()

    # -- connection details ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.broker.port}" if self.secure else self.broker.url

    def _broker_args(self, user: str) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if not self.secure:
            return ["--broker", self.url], env
        credentials = self.secure.folder / "logins" / user / "credentials.json"  # as the operator ships them
        return ["--broker", self.url, "--credentials", str(credentials)], env

    def _record(self) -> Recorder:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="monitor" if self.secure else "recorder")
        rec = Recorder(client)
        if self.secure:
            client.username_pw_set("monitor", self.secure.passwords["monitor"])
            client.tls_set(ca_certs=str(self.secure.ca))
        subscribed = threading.Event()
        client.on_message = rec.on_message
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"fedmekt/{self.federation}/#", qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        client.connect("localhost" if self.secure else "127.0.0.1", self.broker.port)
        client.loop_start()
        assert subscribed.wait(10), "recorder could not subscribe"
        return rec

    # -- parties -----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str],
               clock: str | None = None) -> subprocess.Popen:
        """``clock``: run it with its wall clock shifted (:func:`shifted_clock`)."""
        if clock is not None:
            env = {**env, **shifted_clock(clock)}
        n = self.starts.get(name, 0)
        self.starts[name] = n + 1
        log = open(self.tmp / "logs" / f"{name}-{n}.log", "w")
        proc = subprocess.Popen(_cmd() + args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def store(self, cid: str) -> Path:
        return self.tmp / cid / "store.sqlite"

    def start_client(self, cid: str, fill_store: bool = True, *extra: str,
                     exit_when_done: bool = True, clock: str | None = None) -> subprocess.Popen:
        """A gateway that exits when the run ends (``exit_when_done=False``: the daemon that follows the next runs);
        ``fill_store=False`` restarts it on the store it already has; ``clock``: its wall clock shifted ("+1h")."""
        broker, env = self._broker_args(cid)
        args = ["client", *broker, "--client-id", cid, "--federation", self.federation, "--store", str(self.store(cid))]
        if exit_when_done:
            args.append("--exit-when-done")
        if fill_store:
            args += ["--source", f"split:{self.config}"]
        return self._spawn(cid, args + list(extra), env, clock)

    def start_infer_only(self, cid: str, public_key: Path, *extra: str) -> subprocess.Popen:
        """An inference-only gateway (``client --infer-only``) on 300 random acce samples of its own CSV."""
        rng = np.random.default_rng(0)
        csv = self.tmp / f"{cid}-samples.csv"
        csv.write_text("".join(f"{i / 50:.3f}," + ",".join(f"{v:.4f}" for v in rng.normal(size=3)) + "\n"
                               for i in range(300)))
        broker, env = self._broker_args(cid)
        return self._spawn(cid, ["client", "--infer-only", *broker, "--client-id", cid, "--federation", self.federation,
                                 "--public-key", str(public_key), "--source", f"csv:{csv}", "--modalities", "acce:3",
                                 "--store", str(self.tmp / cid / "store.sqlite"), *extra], env)

    def start_all(self, *aggregator_args: str) -> None:
        """Every client (its store filled from the split), then the aggregator with ``aggregator_args``."""
        for cid in self.client_ids:
            self.start_client(cid)
        self.start_aggregator(*aggregator_args)

    def start_aggregator(self, *extra: str, out: Path | None = None, clock: str | None = None) -> subprocess.Popen:
        """``out``: another run folder (a fresh run; the run counter stays in the folder above it);
        ``clock``: its wall clock shifted ("-1d")."""
        broker, env = self._broker_args("aggregator")
        if self.secure:
            broker += ["--username", "aggregator"]
        args = ["aggregator", *broker, "--config", str(self.config), "--out", str(out or self.out),
                "--round-timeout", str(self.round_timeout), "--wait-clients", str(len(self.client_ids)),
                "--wait-timeout", "180", "--no-progress", *extra]
        return self._spawn("aggregator", args, env, clock)

    @property
    def out(self) -> Path:
        return self.tmp / "aggregator"

    def kill(self, name: str) -> None:
        """SIGKILL, as a power cut or a crash: no clean disconnect, the broker sends the Will."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.killed.add(proc)

    def log(self, name: str, start: int = -1) -> str:
        n = self.starts[name] + start if start < 0 else start
        return (self.tmp / "logs" / f"{name}-{n}.log").read_text(errors="replace")

    def wait_exit(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish within {timeout:.0f} s:\n{self.log(name)[-3000:]}") from None

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        self.recorder.client.loop_stop()
        self.recorder.client.disconnect()
        self.broker.stop()

    # -- what happened ---------------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        """Round rows the aggregator published on ``metrics`` (every publication, duplicates included)."""
        topic = f"fedmekt/{self.federation}/metrics"
        return [json.loads(p) for _, t, p in self.recorder.snapshot() if t == topic]

    def announcements(self, timed: bool = False) -> list:
        """Every round announcement published (``timed``: as (arrival unix time, announcement))."""
        topic = f"fedmekt/{self.federation}/rounds"
        got = [(at, json.loads(unwrap(p))) for at, t, p in self.recorder.snapshot() if t == topic and p]
        return got if timed else [a for _, a in got]

    def final_probe(self) -> dict[str, float]:
        """The converged probe's weighted F1 per modality of the run's last final record."""
        final = json.loads((self.out / "final.jsonl").read_text().splitlines()[-1])
        return {m: final[f"probe_f1_weighted_{m}"] for m in final["pair"].split("-")}

    def inprocess_probe(self) -> dict[str, float]:
        """The same federation in one process: what an undisturbed run must end with, bit for bit."""
        from fedmekt.config import load_config
        from fedmekt.experiment.in_process import run_inprocess
        from sensors.datasets import load_dataset
        from sensors.splits import make_split

        cfg = load_config(self.config)
        split = make_split(load_dataset(cfg.dataset), cfg.pair, scheme=cfg.partition, seed=cfg.seed,
                           clients=cfg.clients)
        final = run_inprocess(cfg, split, progress=False).final
        return {m: final[f"probe_f1_weighted_{m}"] for m in cfg.pair}

    def wait_until(self, what, timeout: float, message: str) -> None:
        """:func:`wait_support.wait_for`, failing at once when a party exits with an error meanwhile."""
        def done():
            if what():
                return True
            dead = [n for n, p in self.procs.items() if p.poll() not in (None, 0) and p not in self.killed]
            if dead:
                raise AssertionError(f"{dead[0]} exited with {self.procs[dead[0]].poll()} while waiting for "
                                     f"{message}:\n{self.log(dead[0])[-3000:]}")
            return False

        wait_for(done, timeout, message, detail=lambda: "aggregator log:\n" + (
            self.log("aggregator")[-3000:] if "aggregator" in self.starts else ""))

    def wait_round_done(self, round_: int, timeout: float = 180) -> None:
        self.wait_until(lambda: any(r["round"] == round_ for r in self.metrics()), timeout,
                        f"round {round_} to complete")

    def wait_announced(self, round_: int, timeout: float = 180) -> dict:
        def found():
            return [a for a in self.announcements() if a.get("plan") and a["plan"]["round"] == round_]

        self.wait_until(lambda: bool(found()), timeout, f"round {round_} to be announced")
        return found()[-1]["plan"]

    def run_to_end(self, timeout: float = 300) -> None:
        """Wait for the aggregator and every client to exit 0."""
        assert self.wait_exit("aggregator", timeout) == 0, self.log("aggregator")[-3000:]
        for cid in self.client_ids:
            if cid in self.procs:
                assert self.wait_exit(cid, 60) == 0, self.log(cid)[-3000:]
