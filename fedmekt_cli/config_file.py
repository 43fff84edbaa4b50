"""``--config FILE`` for a subcommand: every long option of that command as a TOML key.

    broker = "mqtts://lab.example:8883"
    client-id = "gw01"          # or client_id
    public-key = "/etc/fedmekt/aggregator.pub"
    infer-only = true           # a flag: true / false

A service's settings live in one file (systemd units pass only ``--config``); options given on the
command line win over the file. A key that is no option of the command, or a value of the wrong
type, is one error line naming the key.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from fedmekt.errors import UserError

# options a config file cannot set: itself, and the logging flags (logging is set up before the file is read)
_NOT_KEYS = {"help", "config", "version", "verbose", "log-level", "log-json"}


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML file with any of these options as keys (e.g. client-id = \"gw01\"); "
                        "the command line wins")
    p.set_defaults(config_parser=p)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key (long option without dashes, '-' or '_') -> its action."""
    out = {}
    for action in parser._actions:
        longs = [o[2:] for o in action.option_strings if o.startswith("--")]
        for name in longs:
            if name not in _NOT_KEYS and action.dest != argparse.SUPPRESS:
                out[name] = out[name.replace("-", "_")] = action
    return out


def _convert(key: str, action: argparse.Action, value: object) -> object:
    """The TOML value as argparse would have stored it, or UserError naming ``key``."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"config key {key} must be true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._CountAction):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"config key {key} must be a count (0, 1, 2), got {value!r}")
        return value
    kind = action.type or str
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise UserError(f"config key {key} must be an integer, got {value!r}")
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise UserError(f"config key {key} must be a number, got {value!r}")
    if kind not in (int, float) and not isinstance(value, str):
        raise UserError(f"config key {key} must be a string, got {value!r}")
    converted = kind(value) if callable(kind) else value
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"config key {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def apply_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``args`` from ``args.config`` where the command line left an option at its default."""
    path = getattr(args, "config", None)
    if path is None:
        return args
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    parser = args.config_parser
    options = _options(parser)
    for key, value in data.items():
        action = options.get(key)
        if action is None:
            raise UserError(f"config file {path}: unknown key {key!r} (keys are the long options of "
                            f"`{parser.prog}`, e.g. client-id)")
        if getattr(args, action.dest) == parser.get_default(action.dest):  # not given on the command line
            setattr(args, action.dest, _convert(key, action, value))
    return args


def require(args: argparse.Namespace, *dests: str) -> None:
    """UserError for the first of ``dests`` neither the command line nor the config file gave."""
    for dest in dests:
        if getattr(args, dest) in (None, ""):
            raise UserError(f"--{dest.replace('_', '-')} is required (on the command line or in --config)")
