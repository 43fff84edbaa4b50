"""Broker connection flags shared by ``aggregator``, ``client``, ``simulate`` and ``status``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from urllib.parse import urlparse

PASSWORD_ENV = "FEDMEKT_MQTT_PASSWORD"
SCHEMES = ("mqtt", "mqtts")


def add_broker_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", required=required, metavar="URL",
                   help="mqtt://host:port or mqtts://host:port (user:password@ allowed); several, comma-separated "
                        "(URL,URL,…): tried in order, the next one after a failure (failover)")
    g.add_argument("--credentials", type=Path, metavar="FILE",
                   help="credentials.json from `fedmekt provision add`: username, password and (beside it) ca.crt")
    g.add_argument("--username", help="MQTT username (default: the credentials' username, or the client id for devices)")
    g.add_argument("--password", default=os.environ.get(PASSWORD_ENV),
                   help=f"MQTT password [env {PASSWORD_ENV}]; prefer --credentials, a command line is visible to all")
    g.add_argument("--ca-file", type=Path, help="CA certificate for mqtts:// (default: the credentials' ca.crt)")
    g.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    g.add_argument("--key-file", type=Path, help="client private key (mutual TLS)")
    g.add_argument("--mqtt-protocol", choices=("auto", "5", "3.1.1"), default="auto",
                   help="MQTT version (default: v5, falling back to 3.1.1)")
    g.add_argument("--no-retain", action="store_true",
                   help="the broker keeps no retained messages (an MQTT 5 broker says so itself; a 3.1.1 one cannot): "
                        "publish without the retain flag, state then comes from sync answers")
    g.add_argument("--inbox-mib", type=float, default=64.0, metavar="MIB",
                   help="most payload MiB received and not yet processed; the broker is asked to wait while it is "
                        "full (MQTT 5 Receive Maximum), and what overflows anyway is dropped and logged (default 64)")


def check_broker(urls: str) -> None:
    """Refuse a malformed ``--broker`` before anything is imported or connected; a scheme typo gets the URL meant."""
    from fedmekt.errors import UserError
    from fedmekt.transport.mqtt import BrokerAddress
    from sensors.datasets import did_you_mean

    for url in urls.split(","):
        scheme, sep, rest = url.strip().partition("://")
        if url.strip() and scheme not in SCHEMES:
            meant = [f"{s}://{rest if sep else scheme}" for s in SCHEMES]
            hint = did_you_mean(url.strip(), meant) or (f" (did you mean {meant[0]!r}?)" if not sep else "")
            raise UserError(f"broker URL must look like mqtt://host:port or mqtts://host:port, got {url!r}{hint}")
        if sep and not urlparse(url.strip()).hostname:
            raise UserError(f"broker URL {url!r} names no host (mqtt://host:port)")
    BrokerAddress.parse_list(urls)


def read_credentials(path: Path) -> tuple[str, str, Path | None]:
    """(username, password, CA certificate or None) from a provisioned credentials.json."""
    from fedmekt.errors import UserError

    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"credentials file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--credentials {path}: not a credentials.json ({exc})") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) and raw[k] for k in ("username", "password")):
        raise UserError(f"--credentials {path}: needs string fields 'username' and 'password'")
    ca = raw.get("ca")
    if ca is not None and not isinstance(ca, str):
        raise UserError(f"--credentials {path}: 'ca' must be a file name")
    return raw["username"], raw["password"], (Path(path).parent / ca) if ca else None


def min_epoch(args: argparse.Namespace) -> int:
    """The floor of run epochs a gateway of ``args.federation`` accepts: ``--min-epoch``, else the one provisioned
    in ``--credentials`` (``fedmekt provision add``: the federation's epoch when the device was added), else 0."""
    from fedmekt.errors import UserError
    from fedmekt.wire.runs import MAX_EPOCH

    if args.min_epoch is not None:
        if not 0 <= args.min_epoch <= MAX_EPOCH:
            raise UserError(f"--min-epoch must be 0..{MAX_EPOCH}, got {args.min_epoch}")
        return args.min_epoch
    if args.credentials is None:
        return 0
    floors = json.loads(Path(args.credentials).read_text()).get("min_epoch", {})  # read_credentials checked it
    value = floors.get(args.federation, 0) if isinstance(floors, dict) else None
    if type(value) is not int or not 0 <= value <= MAX_EPOCH:
        raise UserError(f"--credentials {args.credentials}: 'min_epoch' must map federations to epochs")
    return value


def link_options(args: argparse.Namespace, client_id: str, username: str | None = None,
                 session_topic: str | None = None, kick_limit: int = 0, takeover: str = "stop"):
    """LinkOptions from the flags; explicit flags win over the credentials file."""
    from fedmekt.errors import UserError
    from fedmekt.transport.mqtt import LinkOptions

    password, ca_file = args.password, args.ca_file
    if args.credentials is not None:
        login, stored, stored_ca = read_credentials(args.credentials)
        if username is not None and login != username and not args.username:
            # the ACL grants a device clients/<login>/… only: any other id's uploads would be dropped
            raise UserError(f"--credentials {args.credentials} are for login {login!r}, not for client id "
                            f"{username!r}: a device's client id is its login name")
        username, password, ca_file = login, args.password or stored, ca_file or stored_ca
    if not args.inbox_mib > 0:
        raise UserError(f"--inbox-mib must be > 0, got {args.inbox_mib}")
    for path in (ca_file, args.cert_file, args.key_file):
        if path is not None and not Path(path).is_file():
            raise UserError(f"file not found: {path}")
    return LinkOptions(client_id=client_id, username=args.username or username, password=password,
                       ca_file=str(ca_file) if ca_file else None,
                       cert_file=str(args.cert_file) if args.cert_file else None,
                       key_file=str(args.key_file) if args.key_file else None, protocol=args.mqtt_protocol,
                       session_topic=session_topic, kick_limit=kick_limit, takeover=takeover,
                       retain=not args.no_retain,
                       inbox_bytes=max(1, int(args.inbox_mib * 2**20)))
