"""Bounded waits on events: the suite must pass on a loaded machine, so no test sleeps a fixed time to
synchronise; it polls what the sleep stood for, up to a timeout, and names it when the timeout passes."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *, every: float = 0.05,
             detail: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s naming
    ``what`` (and ``detail()``, e.g. a log tail). The predicate is asked once more at the deadline, so a
    starved poller still sees an event that came in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(every)
