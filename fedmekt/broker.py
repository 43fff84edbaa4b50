"""Embedded broker: a private mosquitto on a free port (amqtt fallback lives beside it).

Used by ``fedmekt simulate`` when no ``--broker`` is given and by the test fixtures,
so tests exercise the same start-up path users get.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmekt.errors import UserError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
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
        self.stop()
        self.process = _spawn(self.workdir)
        wait_for_port(self.host, self.port)


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
    with a password file); ``extra_config`` is appended verbatim.
    """
    if not mosquitto_available():
        raise UserError("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedmekt-mosquitto-"))
    workdir.mkdir(parents=True, exist_ok=True)
    block = listener or f"listener {port} 127.0.0.1\nallow_anonymous true\n"
    (workdir / "mosquitto.conf").write_text(
        f"{block}"
        f"persistence false\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        f"log_type error\nlog_type warning\nlog_type notice\n"
        f"max_queued_messages 100000\n"
        f"{extra_config}\n"
    )
    proc = MosquittoProcess(port=port, workdir=workdir, process=_spawn(workdir), extra_config=extra_config)
    try:
        wait_for_port(proc.host, port)
    except UserError:
        proc.stop()
        raise UserError(f"mosquitto failed to start on port {port}: {proc.log.strip()[-300:]}") from None
    return proc
