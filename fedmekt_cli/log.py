"""``fedmekt log RUN``: the end of a run's log (``RUN/run.log``), optionally following it while it runs.

    fedmekt log 20261202-101500-simulate-demo      # a run id from `fedmekt runs` (looked up under runs/)
    fedmekt log runs/20261202-101500-simulate-demo -f
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("log", help="show (and follow) a run's log",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, or a run id under --dir")
    p.add_argument("--dir", type=Path, default=Path("runs"), help="where run ids are looked up (default runs/)")
    p.add_argument("-n", "--lines", type=int, default=20, help="last N lines (default 20; 0 = all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run ends")
    p.set_defaults(func=run)


def resolve_run(text: str, root: Path) -> Path:
    """A run folder from a path or an id (an unambiguous prefix of a folder name under ``root``)."""
    from fedmekt.errors import UserError

    path = Path(text)
    if path.is_dir():
        return path
    if root.is_dir():
        matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(text))
        exact = [p for p in matches if p.name == text]
        if exact or len(matches) == 1:
            return (exact or matches)[0]
        if matches:
            raise UserError(f"run id {text!r} is ambiguous: {', '.join(p.name for p in matches[:5])}")
    raise UserError(f"no run {text!r} (not a folder, nor a run id under {root}/; see `fedmekt runs`)")


def _inert(line: str) -> str:
    """A log line with its terminal controls shown, not obeyed (logs written before they were escaped)."""
    from fedmekt.printable import printable

    body = line.rstrip("\n")
    return printable(body) + line[len(body):]


def run(args) -> int:
    from fedmekt_cli.run_record import LOG, RunState
    from fedmekt.errors import UserError

    if args.lines < 0:
        raise UserError("--lines must be >= 0")
    folder = resolve_run(args.run, args.dir)
    path = folder / LOG
    if not path.is_file():
        raise UserError(f"{folder} has no {LOG} (simulate and reproduce write one)")
    with open(path, errors="replace") as fh:
        tail = deque(fh, maxlen=args.lines or None)
        print("".join(map(_inert, tail)), end="", flush=True)
        while args.follow:
            line = fh.readline()
            if line:
                print(_inert(line), end="", flush=True)
                continue
            state = RunState.read(folder)
            if state is None or not state.alive():
                break
            time.sleep(0.5)
    return 0
