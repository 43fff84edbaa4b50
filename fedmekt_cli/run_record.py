"""A run folder's own record: ``run-state.json`` (who runs it, how far, how it ended) and ``run.log``.

``fedmekt runs`` and ``fedmekt log`` read them. A run that ends before its first round leaves nothing
behind when this invocation created the folder: no empty run folders after a typo or a Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedmekt.artifacts import METRICS, atomic_write_bytes
from fedmekt.printable import PrintableFormatter

STATE = "run-state.json"
LOG = "run.log"
STATES = ("running", "finished", "failed", "interrupted")


_URL_SECRET = re.compile(r"(://[^/:@,\s]+):[^@/,\s]*@")


def masked_url(url: str) -> str:
    """Broker URL(s) with the password of any ``user:password@`` replaced by ``***``."""
    return _URL_SECRET.sub(r"\1:***@", url)


def redacted(argv: list[str]) -> list[str]:
    """``argv`` with passwords masked (``--password X``, ``user:X@`` in broker URLs): state files are shared."""
    out = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--password":
            arg = "***"
        elif arg.startswith("--password="):
            arg = "--password=***"
        out.append(masked_url(arg))
    return out


@dataclass
class RunState:
    """Contents of ``run-state.json``."""

    command: str
    state: str = "running"
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    argv: list[str] = field(default_factory=lambda: redacted(sys.argv))
    started: float = field(default_factory=time.time)
    ended: float | None = None
    info: dict = field(default_factory=dict)   # algorithm, dataset, rounds, federation, broker …
    error: str | None = None                   # why a failed run failed (its error's first line)

    @classmethod
    def read(cls, run_dir: Path) -> "RunState | None":
        """The folder's state, or None when it has none or it is unreadable."""
        try:
            data = json.loads((Path(run_dir) / STATE).read_text())
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        return state if state.state in STATES else None

    def alive(self) -> bool:
        """True while the recorded process still runs (on this host)."""
        if self.state != "running" or self.host != socket.gethostname():
            return self.state == "running"
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class RunRecord:
    """Context manager around a command writing ``out``: state file, a log file handler, cleanup on failure."""

    def __init__(self, out: Path, command: str, **info) -> None:
        self.out = Path(out)
        self.created = not self.out.exists() or not any(self.out.iterdir())
        self.state = RunState(command, info=info)
        self._handler: logging.Handler | None = None

    def __enter__(self) -> "RunRecord":
        self.out.mkdir(parents=True, exist_ok=True)
        self._write()
        self._handler = logging.FileHandler(self.out / LOG)
        self._handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        return self

    def note(self, text: str, echo: bool = True) -> None:
        """Print ``text`` (unless not ``echo``) and keep it in the run's log."""
        if echo:
            print(text, flush=True)
        if self._handler is not None:
            for line in text.splitlines():
                self._handler.emit(logging.LogRecord("fedmekt.run", logging.INFO, "", 0, line, None, None))

    def update(self, **info) -> None:
        self.state.info.update(info)
        self._write()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
        if exc_type is None:
            self.state.state = "finished"
        elif issubclass(exc_type, KeyboardInterrupt):
            self.state.state = "interrupted"
        else:
            self.state.state = "failed"
            self.state.error = (str(exc).strip().splitlines() or [exc_type.__name__])[0][:300]
        self.state.ended = time.time()
        if exc_type is not None and self.created and not (self.out / METRICS).exists():
            shutil.rmtree(self.out, ignore_errors=True)   # nothing done: leave no empty run folder
            return
        self._write()

    def _write(self) -> None:
        atomic_write_bytes(self.out / STATE, json.dumps(asdict(self.state), indent=1).encode())
