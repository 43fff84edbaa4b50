"""A run folder's own record: ``run-state.json`` (who runs it, how far, how it ended) and ``run.log``.

``fedmekt runs``, ``fedmekt log`` and ``fedmekt stop`` read them. A run that ends before its first round leaves
nothing behind when this invocation created the folder: no empty run folders after a typo or a Ctrl-C.
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


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3… of /proc/PID/stat (state, ppid, …), None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()   # the command name before ")" may hold spaces
    except (OSError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None where /proc cannot say: with the pid it names
    one process, so a pid the kernel has since given to another process is not taken for the run."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 and fields[19].isdigit() else None


def run_id(folder: Path) -> str:
    """A run's id: its folder's name. ``runs``, ``log``, ``stop``, ``report``, ``export --run``, the rows of
    ``metrics.jsonl`` and the dashboard all name the run by it (the federation's wire id, ``e<epoch>-<hex>``,
    is recorded beside it as ``federation_run`` and accepted wherever a run id is)."""
    return Path(folder).resolve().name


def checked_run_id(folder: Path) -> str:
    """The id of a run about to start in ``folder`` (:func:`run_id`), which the signed federation manifest carries
    to the gateways: UserError, before anything loads, for a name the manifest cannot carry."""
    from fedmekt.errors import UserError
    from fedmekt.wire.runs import check_run_name

    try:
        return check_run_name(run_id(folder))
    except ValueError as exc:
        raise UserError(f"--out {folder}: the folder's name is the run's id, which the gateways are sent; "
                        f"{exc}") from None


def federation_run(folder: Path) -> str | None:
    """The federation run id (``e<epoch>-<hex>``) of an aggregator's or simulate's run folder, None for others:
    from its state once the run ended, from its round rows while it runs."""
    state = RunState.read(folder)
    if state is not None and isinstance(state.info.get("federation_run"), str):
        return state.info["federation_run"]
    try:
        with open(Path(folder) / METRICS, "rb") as fh:
            first = fh.readline()
        value = json.loads(first).get("federation_run") if first.strip() else None
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def resolve_run(text: str, root: Path) -> Path:
    """A run folder from a path, a run id (an unambiguous prefix of a folder name under ``root``) or a federation
    run id (``e<epoch>-<hex>``, as gateways log it) of a run folder under ``root``."""
    from fedmekt.errors import UserError

    path = Path(text)
    if path.is_dir():
        return path
    if root.is_dir():
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        matches = [p for p in folders if p.name.startswith(text)]
        exact = [p for p in matches if p.name == text]
        if exact or len(matches) == 1:
            return (exact or matches)[0]
        if matches:
            raise UserError(f"run id {text!r} is ambiguous: {', '.join(p.name for p in matches[:5])}")
        if text.startswith("e"):
            named = [p for p in folders if federation_run(p) == text]
            if named:
                return named[0]
    raise UserError(f"no run {text!r} (not a folder, nor a run id under {root}/; see `fedmekt runs`)")


def refuse_used_folder(out: Path, resumes: bool = False) -> None:
    """UserError when ``out`` holds a run that this command must not write into: one that is running (always),
    or any earlier run for a command that starts afresh (``simulate``, ``reproduce``: it would mix the old
    run's files with the new). The aggregator (``resumes``) checks a finished run itself: it resumes the rest."""
    from fedmekt.errors import UserError

    state = RunState.read(out)
    if state is not None and state.alive():
        where = f"process {state.pid} on {state.host}" if state.host != socket.gethostname() else f"process {state.pid}"
        raise UserError(f"{out} is the folder of a running {state.command} ({where}): wait for it, or "
                        f"`fedmekt stop {out}`")
    if not resumes and (state is not None or (Path(out) / METRICS).is_file()):
        how = f"a {state.state} {state.command} run" if state is not None else "a run"
        raise UserError(f"{out} already holds {how}: pass a new --out (or leave it out for a fresh folder)")


@dataclass
class RunState:
    """Contents of ``run-state.json``."""

    command: str
    state: str = "running"
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    pid_start: int | None = field(default_factory=lambda: process_start(os.getpid()))   # see process_start
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
            data.setdefault("pid_start", None)   # written before it was recorded: not this reader's process
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        return state if state.state in STATES else None

    def alive(self) -> bool:
        """True while the recorded process still runs (on this host; a run of another host counts as running)."""
        if self.state != "running" or self.host != socket.gethostname():
            return self.state == "running"
        return self.process_lives()

    def process_lives(self) -> bool:
        """Whether the recorded pid is still the process that wrote this state (on this host)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        fields = _proc_stat(self.pid)
        if fields and fields[0] in ("Z", "X"):   # exited, not yet reaped by its parent
            return False
        now = process_start(self.pid)
        return self.pid_start is None or now is None or now == self.pid_start


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
