"""``fedmekt`` entry point: one command, one module per subcommand.

Subcommand modules are imported here but must not import torch at module level,
so that ``fedmekt infer`` works in an inference-only install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fedmekt.errors import UserError

# (subcommand, module under fedmekt.cli); each module defines register(subparsers).
COMMANDS = (
    ("data", "data"),
    ("reproduce", "reproduce"),
    ("simulate", "simulate"),
    ("aggregator", "aggregator"),
    ("client", "client"),
    ("export", "export"),
    ("infer", "infer"),
    ("report", "report"),
    ("status", "status"),
    ("provision", "provision"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmekt", description="Multimodal federated learning on edge devices (FedMEKT).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _, module in COMMANDS:
        try:
            mod = importlib.import_module(f"fedmekt.cli.{module}")
        except ModuleNotFoundError as exc:  # a subcommand whose optional dependency is missing
            if exc.name and exc.name.startswith("fedmekt.cli."):
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"fedmekt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave: missing, unwritable, a folder instead of a file
        if args.verbose:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fedmekt {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedmekt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
