"""``--format text|json`` on every command that prints a listing or a summary (Flower's spelling), with
``--json`` kept as its short form: both set ``args.json``."""

from __future__ import annotations

import argparse


class _Format(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None) -> None:
        setattr(namespace, self.dest, value == "json")


def add_format_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--format {text,json}`` and ``--json``; ``what`` says what JSON holds (e.g. "one JSON object")."""
    p.add_argument("--format", dest="json", action=_Format, choices=("text", "json"), default=False,
                   help=f"text (default) or json: {what}")
    p.add_argument("--json", action="store_true", help="the same as --format json")
