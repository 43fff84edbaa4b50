"""Federation run ids that order runs without a clock: ``e<epoch>-<random hex>``.

The id travels in the signed federation manifest and in every signed model package, so its epoch
is a signed run order: a client follows a manifest only if its run is not older than the one it
trusts, and a gateway never replaces a newer run's model with an older run's, whatever their
round numbers. The epoch is a counter the aggregator persists and raises for every fresh run
(fedmekt/run_counter.py), so the order holds whatever any party's wall clock says (a Raspberry Pi has
no real-time clock). Ids of the earlier form ``<start time in ms>-<hex>`` order before every epoch
id, by their time among themselves; ids of any other form (hand-exported packages: "") before both.

A run also has a name, the one people use: its run folder's name (``runs/lab`` is run ``lab``, as
``fedmekt runs`` lists it). The signed manifest carries it beside the id, so a gateway's log names
the run as the operator's listing does (:func:`run_label`); it is checked like any wire text.
"""

from __future__ import annotations

import re
import secrets

_EPOCH = re.compile(r"^e([1-9][0-9]{0,17})-[0-9a-f]{8}$")
_TIMED = re.compile(r"^([0-9]{13})-[0-9a-f]{8}$")  # before epochs: ordered by the aggregator's wall clock
MAX_EPOCH = 10**18 - 1
RUN_NAME = re.compile(r"^[A-Za-z0-9_.+\-]{1,128}\Z")  # a run's name as the manifest may carry it
RUN_NAME_RULE = "1 to 128 letters, digits, '.', '_', '+' or '-'"


def new_run_id(epoch: int) -> str:
    """A fresh run's id at ``epoch`` (>= 1); the random part tells apart two runs of one epoch."""
    if not 1 <= epoch <= MAX_EPOCH:
        raise ValueError(f"run epoch must be 1..{MAX_EPOCH}, got {epoch}")
    return f"e{epoch}-{secrets.token_hex(4)}"


def run_epoch(run: str) -> int:
    """The epoch of a run id made by :func:`new_run_id`; 0 for any other id (including "")."""
    m = _EPOCH.match(run)
    return int(m.group(1)) if m else 0


def run_order(run: str) -> tuple[int, int]:
    """Sort key of a run id: epoch ids after timed ids (the earlier form) after any other id."""
    if m := _EPOCH.match(run):
        return 2, int(m.group(1))
    if m := _TIMED.match(run):
        return 1, int(m.group(1))
    return 0, 0


def check_run_name(name: str) -> str:
    """``name`` when the signed manifest may carry it as a run's name; ValueError saying what it may be."""
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ValueError(f"a run's name is {RUN_NAME_RULE}, got {name!r:.80}")
    return name


def run_label(run: str, name: str = "") -> str:
    """A run as people read it: its name (the folder ``fedmekt runs`` lists) with the federation run id beside it."""
    if name and run:
        return f"{name} (federation run {run})"
    return name or run or "(none: hand-exported)"
