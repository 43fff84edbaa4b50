"""``fedmekt log RUN``: the end of a run's log (``RUN/run.log``), optionally following it while it runs.

    fedmekt log 20261202-101500-simulate-demo      # a run id from `fedmekt runs` (looked up under runs/)
    fedmekt log runs/20261202-101500-simulate-demo -f
    fedmekt log e3-9f2c41d0                          # an aggregator run by its federation run id
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


def _inert(line: str) -> str:
    """A log line with its terminal controls shown, not obeyed (logs written before they were escaped)."""
    from fedmekt.printable import printable

    body = line.rstrip("\n")
    return printable(body) + line[len(body):]


def run(args) -> int:
    from fedmekt_cli.run_record import LOG, RunState, resolve_run
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
