"""Embedded broker: a private mosquitto on a free port (amqtt fallback lives beside it).

Used by ``fedmekt simulate`` when no ``--broker`` is given and by the test fixtures,
so tests exercise the same start-up path users get.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmekt.errors import UserError


def free_port(avoid: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (and not ``avoid``, one already handed out)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != avoid:
            return port


def wait_for_port(host: str, port: int, timeout: float = 10.0, process: subprocess.Popen | None = None) -> None:
    """Until something accepts on host:port; fails at once when ``process`` (the one meant to listen) has exited,
    e.g. because another process took its port between ``free_port`` and its bind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UserError(f"broker for {host}:{port} exited (code {process.returncode}) before it listened")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise UserError(f"broker did not open {host}:{port} within {timeout:.0f} s")


@dataclass
class MosquittoProcess:
    """A mosquitto child process with its own config and log in a temporary folder."""

    port: int
    workdir: Path
    process: subprocess.Popen
    host: str = "127.0.0.1"
    extra_config: str = field(default="", repr=False)
    temporary: bool = False   # workdir was made for this broker: removed by stop()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Terminate mosquitto (SIGKILL after 5 s) and remove its temporary folder."""
        self._terminate()
        if self.temporary:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as in a crash; ``restart`` brings it back on the same port."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self._terminate()
        self.process = _spawn(self.workdir)
        self.wait_ready()

    def reload(self) -> None:
        """Re-read the password file and ACL (SIGHUP), as the operator does after ``provision add``/``remove``."""
        self.process.send_signal(signal.SIGHUP)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until mosquitto accepts on its port and handles SIGHUP: it opens its listeners before it installs its
        signal handlers, and a SIGHUP in between kills it (seen under load)."""
        deadline = time.monotonic() + timeout
        wait_for_port(self.host, self.port, timeout=timeout, process=self.process)
        while True:
            if self.process.poll() is not None:
                raise UserError(f"mosquitto on port {self.port} exited (code {self.process.returncode}) while starting")
            if _handles(self.process.pid, signal.SIGHUP):
                return
            if time.monotonic() > deadline:
                raise UserError(f"mosquitto on port {self.port} did not install its signal handlers within "
                                f"{timeout:.0f} s")
            time.sleep(0.01)


def _handles(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux's /proc; elsewhere assumed, as it cannot be told)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


def _binary() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _spawn(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [_binary(), "-c", str(workdir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_mosquitto(port: int | None = None, extra_config: str = "", workdir: Path | None = None,
                    listener: str | None = None) -> MosquittoProcess:
    """Start mosquitto on 127.0.0.1:port (a free one by default).

    ``listener`` replaces the default anonymous listener block (e.g. a TLS listener
    with a password file); ``extra_config`` is appended verbatim. A port picked here that another
    process takes before mosquitto binds it (it is in the ephemeral range) is replaced by a fresh one.
    """
    if not mosquitto_available():
        raise UserError("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
    tries = 3 if port is None and listener is None else 1
    temporary = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedmekt-mosquitto-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(tries):
        chosen = port or free_port()
        block = listener or f"listener {chosen} 127.0.0.1\nallow_anonymous true\n"
        (workdir / "mosquitto.conf").write_text(  # a listener block's own limits come later and win
            f"max_queued_messages 100000\n"
            f"{block}"
            f"persistence false\n"
            f"log_dest file {workdir / 'mosquitto.log'}\n"
            f"log_type error\nlog_type warning\nlog_type notice\n"
            f"{extra_config}\n"
        )
        proc = MosquittoProcess(port=chosen, workdir=workdir, process=_spawn(workdir), extra_config=extra_config,
                                temporary=temporary)
        try:
            proc.wait_ready()
            return proc
        except UserError as exc:
            failure = UserError(f"mosquitto failed to start on port {chosen}: {proc.log.strip()[-300:] or exc}")
            proc._terminate()
    proc.stop()
    raise failure


class AmqttBroker:
    """amqtt (pure Python, MQTT 3.1.1 only) on 127.0.0.1:port in a daemon thread with its own event loop.

    The fallback when mosquitto is not installed, so ``fedmekt simulate`` runs with pip
    packages alone. It lacks v5 session/message expiry; the protocol does not depend on them.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        import asyncio
        import threading

        self.host, self.port = host, port or free_port()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise UserError(f"embedded amqtt broker failed to start on port {self.port}: {self._error}")
        wait_for_port(self.host, self.port)

    def _run(self) -> None:
        import asyncio
        import logging

        for noisy in ("amqtt", "transitions"):  # they log every client, packet and state change
            logging.getLogger(noisy).setLevel(logging.CRITICAL)

        async def main() -> None:
            from amqtt.broker import Broker

            broker = Broker({
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            })
            self._loop = asyncio.get_running_loop()
            # a refused v5 CONNECT (our clients probe v5 first) surfaces as an unhandled error in amqtt
            self._loop.set_exception_handler(
                lambda loop, ctx: logging.getLogger("amqtt").debug("broker: %s", ctx.get("message")))
            self._stop = asyncio.Event()
            try:
                await broker.start()
            except BaseException as exc:  # reported to the constructor
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await broker.shutdown()

        asyncio.run(main())

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)


def embedded_broker(prefer: str = "auto") -> MosquittoProcess | AmqttBroker:
    """A private broker for ``fedmekt simulate`` without ``--broker``: mosquitto on a free port
    when installed, otherwise amqtt in-process. ``prefer`` = "mosquitto" | "amqtt" forces one."""
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise UserError(f"embedded broker must be auto, mosquitto or amqtt, got {prefer!r}")
    if prefer == "mosquitto" or (prefer == "auto" and mosquitto_available()):
        return start_mosquitto()
    try:
        import amqtt  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("no broker: install mosquitto, or amqtt (pip install amqtt), or pass --broker") from None
    return AmqttBroker()
