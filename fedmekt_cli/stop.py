"""``fedmekt stop RUN``: end a run the kit started, as Ctrl-C would, and wait until it has ended.

    fedmekt stop lab                 # a run id from `fedmekt runs` (looked up under runs/)
    fedmekt stop runs/lab --wait 120

The run's folder records the process that runs it (``run-state.json``: pid, host). ``stop`` sends that
process SIGTERM: it finishes writing its checkpoint, leaves the broker and records itself ``interrupted``;
started again with the same command it resumes after its last completed round. A run that has ended,
whose process is gone, or that runs on another host is refused with a line saying so.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("stop", help="stop a running run (SIGTERM to its process; it can resume)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, or a run id under --dir")
    p.add_argument("--dir", type=Path, default=Path("runs"), help="where run ids are looked up (default runs/)")
    p.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for the run to end (default 60; 0 = signal and return)")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedmekt.errors import UserError
    from fedmekt_cli.run_record import STATE, RunState, resolve_run

    if not 0 <= args.wait < float("inf"):
        raise UserError("--wait must be a number of seconds >= 0")
    folder = resolve_run(args.run, args.dir)
    state = RunState.read(folder)
    if state is None:
        raise UserError(f"{folder} has no readable {STATE}: not a run the kit started")
    if state.state != "running":
        why = f" ({state.error})" if state.error else ""
        raise UserError(f"{folder.name} is not running: it {state.state}{why}")
    if state.host != socket.gethostname():
        raise UserError(f"{folder.name} runs on host {state.host}, not here: run `fedmekt stop` there")
    if not state.process_lives():
        raise UserError(f"{folder.name} is not running: its process {state.pid} is gone (killed, or the machine "
                        "restarted) without recording how it ended")
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        raise UserError(f"{folder.name} is not running: its process {state.pid} ended just now") from None
    except PermissionError:
        raise UserError(f"{folder.name} runs as another user (process {state.pid}): stop it as that user") from None
    print(f"{folder.name}: asked process {state.pid} to stop (SIGTERM)", flush=True)
    deadline = time.monotonic() + args.wait
    while args.wait and state.process_lives():
        if time.monotonic() >= deadline:
            raise UserError(f"{folder.name}: process {state.pid} still runs {args.wait:g} s after SIGTERM "
                            f"(see `fedmekt log {folder.name}`)")
        time.sleep(0.2)
    if not args.wait:
        return 0
    after = RunState.read(folder)
    if after is None:
        print(f"{folder.name}: stopped before its first round; nothing was kept")
    else:
        print(f"{folder.name}: stopped ({after.state}); run the same command again to resume it")
    return 0
