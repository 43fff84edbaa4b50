"""``fedmekt`` entry point: one command, one module per subcommand.

Subcommand modules are imported here but must not import torch at module level,
so that ``fedmekt infer`` works in an inference-only install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fedmekt.errors import UserError
from fedmekt.printable import PrintableFormatter
from fedmekt_cli.broker_args import check_broker
from sensors.datasets import did_you_mean

# (subcommand, module under fedmekt_cli); each module defines register(subparsers).
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
    ("dashboard", "dashboard"),
    ("runs", "runs"),
    ("log", "log"),
    ("stop", "stop"),
    ("provision", "provision"),
)
# our packages log at the chosen level; everything else (matplotlib, paho, amqtt …) only warnings unless -vv
OUR_LOGGERS = ("fedmekt", "aggregator", "edge_client", "export", "sensors")
LEVELS = ("debug", "info", "warning", "error")
# what only the [train] extra installs: a command that imports one of them on an inference-only install says so
TRAIN_ONLY = ("torch", "scipy", "matplotlib", "onnx", "amqtt")
TRAIN_HINT = "needs the [train] extra (pip install 'fedmekt-edge[train]')"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so every ``finally`` (embedded broker, run folder) runs as on Ctrl-C."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedmekt-edge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_logging_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """Logging flags on the top parser and on every (nested) subcommand, so ``fedmekt simulate -v`` works too."""
    suppress = {} if top else {"default": argparse.SUPPRESS}   # a subcommand's absent flag keeps the top value
    g = parser.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="count", help="debug logs of fedmekt (-vv: of every library too)",
                   **({"default": 0} if top else suppress))
    g.add_argument("--log-level", choices=LEVELS, help="level of fedmekt's logs (default info)",
                   **({"default": None} if top else suppress))
    g.add_argument("--log-json", action="store_true", help="logs as JSON lines on stderr",
                   **({"default": False} if top else suppress))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_logging_options(child, top=False)


def _plain(text: str | None) -> str | None:
    """Docstrings double as help text; their reStructuredText literals (````x````) print as plain x."""
    return text.replace("``", "") if text else text


class Parser(argparse.ArgumentParser):
    """Every parser of the command (subparsers inherit the class): help text without reST markup."""

    def __init__(self, *args, **kwargs):
        for key in ("description", "epilog"):
            kwargs[key] = _plain(kwargs.get(key))
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if isinstance(kwargs.get("help"), str):
            kwargs["help"] = _plain(kwargs["help"])
        return super().add_argument(*args, **kwargs)

    def _check_value(self, action, value):
        """A value outside ``choices`` (a subcommand, ``--algorithm``) names the near miss meant."""
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)}; "
                                                 f"choose from {', '.join(map(str, action.choices))}")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option is reported by its subcommand, with the near miss meant."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self
            while parser._subparsers is not None:   # down to the (nested) subcommand the options belong to
                action = parser._subparsers._group_actions[0]
                child = action.choices.get(getattr(parsed, action.dest, None))
                if child is None:
                    break
                parser = child
            options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            flag = next((e.split("=")[0] for e in extras if e.startswith("-")), "")
            parser.error(f"unrecognized arguments: {' '.join(extras)}{did_you_mean(flag, options) if flag else ''}")
        return parsed

    def error(self, message: str):
        """One line, like every other error of the command (argparse would print the usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def train_missing() -> str | None:
    """The first module of the [train] extra this install lacks (an inference-only install: torch), else None."""
    for name in TRAIN_ONLY:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ValueError:  # a module set to None in sys.modules, as the tests do
            return name
    return None


def needs_train(module, args: argparse.Namespace | None) -> bool:
    """A command module's ``NEEDS_TRAIN``: True, False, or a function of the parsed arguments (``client
    --infer-only`` does not train); with ``args`` None, whether any use of the command needs it."""
    need = getattr(module, "NEEDS_TRAIN", False)
    return bool(need if not callable(need) else args is None or need(args))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedmekt", description="Multimodal federated learning on edge devices (FedMEKT).")
    parser.add_argument("--version", action="version", version=f"fedmekt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = train_missing() is None
    for name, module in COMMANDS:
        try:
            mod = importlib.import_module(f"fedmekt_cli.{module}")
        except ModuleNotFoundError as exc:  # a subcommand whose optional dependency is missing
            if exc.name and exc.name.startswith("fedmekt_cli."):
                continue
            raise
        mod.register(sub)
        if not train and needs_train(mod, None):  # inference-only install: say which commands cannot run here
            entry = next(a for a in sub._choices_actions if a.dest == name)
            entry.help = f"{entry.help} ({getattr(mod, 'TRAIN_NOTE', 'needs the [train] extra')})"
    _add_logging_options(parser, top=True)
    return parser


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the traceback when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else getattr(logging, (args.log_level or "info").upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_json else
                         PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if args.verbose >= 2 else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if needs_train(importlib.import_module(f"fedmekt_cli.{dict(COMMANDS)[args.command]}"), args) \
                and train_missing():
            print(f"fedmekt {args.command}: {TRAIN_HINT}", file=sys.stderr)
            return 2
        if getattr(args, "broker", None):
            check_broker(args.broker)
        # tqdm makes its write lock on the first log line, importing multiprocessing; a SIGTERM arriving there was
        # swallowed (tqdm's cleanup raised AttributeError over it and logging ate that): make the lock now
        tqdm.get_lock()
        with logging_redirect_tqdm([logging.getLogger()]):   # a log line clears the progress bar, then redraws it
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"fedmekt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_ONLY:
            raise
        print(f"fedmekt {args.command}: {TRAIN_HINT}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fedmekt runs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
    except OSError as exc:  # a path the user gave: missing, unwritable, a folder instead of a file
        if args.verbose:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fedmekt {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"fedmekt {args.command}: terminated", file=sys.stderr)
        _exit_now(143)
    except KeyboardInterrupt:
        print(f"fedmekt {args.command}: interrupted", file=sys.stderr)
        return 130


def _exit_now(code: int) -> None:
    """Exit without waiting for worker threads: the ``finally`` blocks ran, and SIGTERM must not hang a service."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
