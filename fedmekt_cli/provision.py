"""``fedmekt provision``: the secured broker's CA, certificate, logins and ACL.

    fedmekt provision init ~/fedmekt-operator --host broker.example.org --broker-dir /etc/mosquitto/fedmekt
    fedmekt provision add ~/fedmekt-operator aggregator --role aggregator
    fedmekt provision add ~/fedmekt-operator c000 --federation demo      # a device
    fedmekt provision add ~/fedmekt-operator dashboard --role monitor   # read-only, for `fedmekt status`
    fedmekt provision remove ~/fedmekt-operator c000                    # revoke

The operator folder keeps the CA key and every login's credentials; the broker folder gets
only what mosquitto serves. Reload mosquitto (SIGHUP) after ``add`` / ``remove``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROLE_HELP = "device (default), aggregator, or monitor (reads everything, publishes nothing)"


def register(subparsers) -> None:
    p = subparsers.add_parser("provision", help="CA, broker certificate, logins and ACL of a secured broker",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = sub.add_parser("init", help="create the CA, the broker certificate, password file, ACL and mosquitto config")
    q.add_argument("operator", type=Path, help="operator folder (CA key, credentials); keep it off the broker")
    q.add_argument("--host", action="append", required=True, help="DNS name or IP devices connect to (repeatable)")
    q.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    q.add_argument("--broker-dir", type=Path, default=None,
                   help="folder mosquitto reads (default OPERATOR/broker), e.g. /etc/mosquitto/fedmekt")
    q.add_argument("--days", type=int, default=825, help="server certificate lifetime in days (default 825)")
    q = sub.add_parser("add", help="add or re-key a login (device, aggregator, monitor)")
    q.add_argument("operator", type=Path)
    q.add_argument("name", help="login name == MQTT client id; a device's fedmekt client id, e.g. c000")
    q.add_argument("--role", default="device", help=ROLE_HELP)
    q.add_argument("--federation", action="append", default=[],
                   help="federation the login may use (repeatable; required for devices, default all otherwise)")
    q.add_argument("--password-stdin", action="store_true", help="read the password from stdin (default random)")
    q = sub.add_parser("remove", help="revoke a login")
    q.add_argument("operator", type=Path)
    q.add_argument("name")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedmekt.provisioning import registry

    if args.action == "init":
        dep = registry.init(args.operator, tuple(args.host), args.port, args.broker_dir, args.days)
        print(f"CA in {args.operator}; broker files in {dep.broker_dir}: "
              f"include {dep.broker_dir / 'fedmekt.conf'} in mosquitto's configuration")
    elif args.action == "add":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        bundle = registry.add(args.operator, args.name, args.role, tuple(args.federation), password)
        print(f"{args.role} {args.name}: copy {bundle}/ to where it runs; reload mosquitto (SIGHUP)")
    else:
        registry.remove(args.operator, args.name)
        print(f"removed {args.name}; reload mosquitto (SIGHUP)")
    return 0
