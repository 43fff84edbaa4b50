"""Option values spelt one way in every subcommand (``--pair A-B``, ``--clients 10,10,10``), checked before
anything heavy is imported, and a near miss answered with "did you mean"."""

from __future__ import annotations

from collections.abc import Iterable

from fedmekt.errors import UserError
from sensors.datasets import did_you_mean


def parse_ints(text: str, n: int, what: str) -> tuple[int, ...]:
    """``"10,10,10"`` → ``(10, 10, 10)``; anything but ``n`` comma-separated integers is one error line."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{what} must be {n} comma-separated integers, got {text!r}") from None
    if len(values) != n:
        raise UserError(f"{what} must be {n} comma-separated integers, got {text!r}")
    return values


def parse_pair(text: str | None, default: tuple[str, str], modalities: Iterable[str] = ()) -> tuple[str, str]:
    """``"acce-depth"`` → ``("acce", "depth")``; None gives the dataset's default pair. With the dataset's
    ``modalities``, a modality it lacks is refused here rather than after its files are read."""
    if not text:
        return tuple(default)
    pair = tuple(text.split("-"))
    if len(pair) != 2 or not all(pair):
        raise UserError(f"--pair must be two modalities joined by '-', got {text!r}")
    known = list(modalities)
    for m in pair if known else ():
        if m not in known:
            raise UserError(f"--pair {text}: the dataset has no modality {m!r}{did_you_mean(m, known)}; "
                            f"it has {', '.join(known)}")
    return pair


def parse_choices(text: str, choices: Iterable[str], what: str) -> list[str]:
    """``"fedmekt-c,mmfedavg"`` → the list, each a member of ``choices`` (a typo gets "did you mean")."""
    known = list(choices)
    picked = [a.strip() for a in text.split(",") if a.strip()]
    if not picked:
        raise UserError(f"{what} is empty; choose from {', '.join(known)}")
    for a in picked:
        if a not in known:
            raise UserError(f"{what}: unknown {a!r}{did_you_mean(a, known)}; choose from {', '.join(known)}")
    return picked
