"""Federation run ids that order runs: ``<start time in ms>-<random hex>``.

The id travels in the signed federation manifest and in every signed model package, so its
start time is a signed run order: a client follows a manifest only if its run is not older
than the one it trusts, and a gateway never replaces a newer run's model with an older run's,
whatever their round numbers. Ids of another form (older runs) order before every timed id.
"""

from __future__ import annotations

import re
import secrets
import time

_RUN = re.compile(r"^([0-9]{13})-[0-9a-f]{8}$")


def new_run_id(now: float | None = None) -> str:
    """A fresh run's id, ordered by its start time (the aggregator's wall clock)."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:013d}-{secrets.token_hex(4)}"


def run_order(run: str) -> int:
    """Start time in ms of a run id made by :func:`new_run_id`; 0 for any other id (including "")."""
    m = _RUN.match(run)
    return int(m.group(1)) if m else 0
