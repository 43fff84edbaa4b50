"""Broker connection flags shared by ``aggregator``, ``client``, ``simulate`` and ``status``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

PASSWORD_ENV = "FEDMEKT_MQTT_PASSWORD"


def add_broker_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", required=required, metavar="URL",
                   help="mqtt://host:port or mqtts://host:port (user:password@ allowed)")
    g.add_argument("--username", help="MQTT username (default: the client id for devices)")
    g.add_argument("--password", default=os.environ.get(PASSWORD_ENV),
                   help=f"MQTT password [env {PASSWORD_ENV}]")
    g.add_argument("--ca-file", type=Path, help="CA certificate for mqtts://")
    g.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    g.add_argument("--key-file", type=Path, help="client private key (mutual TLS)")
    g.add_argument("--mqtt-protocol", choices=("auto", "5", "3.1.1"), default="auto",
                   help="MQTT version (default: v5, falling back to 3.1.1)")


def link_options(args: argparse.Namespace, client_id: str, username: str | None = None):
    from fedmekt.errors import UserError
    from fedmekt.mqtt import LinkOptions

    for path in (args.ca_file, args.cert_file, args.key_file):
        if path is not None and not Path(path).is_file():
            raise UserError(f"file not found: {path}")
    return LinkOptions(client_id=client_id, username=args.username or username, password=args.password,
                       ca_file=str(args.ca_file) if args.ca_file else None,
                       cert_file=str(args.cert_file) if args.cert_file else None,
                       key_file=str(args.key_file) if args.key_file else None, protocol=args.mqtt_protocol)
