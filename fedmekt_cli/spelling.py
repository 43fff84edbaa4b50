"""Option values spelt one way in every subcommand: ``--pair A-B`` and ``--clients 10,10,10``."""

from __future__ import annotations

from fedmekt.errors import UserError


def parse_ints(text: str, n: int, what: str) -> tuple[int, ...]:
    """``"10,10,10"`` → ``(10, 10, 10)``; anything but ``n`` comma-separated integers is one error line."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{what} must be {n} comma-separated integers, got {text!r}") from None
    if len(values) != n:
        raise UserError(f"{what} must be {n} comma-separated integers, got {text!r}")
    return values


def parse_pair(text: str | None, default: tuple[str, str]) -> tuple[str, str]:
    """``"acce-depth"`` → ``("acce", "depth")``; None gives the dataset's default pair."""
    if not text:
        return tuple(default)
    pair = tuple(text.split("-"))
    if len(pair) != 2 or not all(pair):
        raise UserError(f"--pair must be two modalities joined by '-', got {text!r}")
    return pair
