"""``fedmekt provision``: the secured broker's CA, certificate, logins and ACL.

    fedmekt provision init ~/fedmekt-operator --host broker.example.org --broker-dir /etc/mosquitto/fedmekt
    fedmekt provision add ~/fedmekt-operator aggregator --role aggregator --federation demo
    fedmekt provision add ~/fedmekt-operator c000 --federation demo --aggregator-state /var/lib/fedmekt  # a device
    fedmekt provision add ~/fedmekt-operator dashboard --role monitor   # read-only, for `fedmekt status`
    fedmekt provision remove ~/fedmekt-operator c000                    # revoke, then reload mosquitto
    fedmekt provision clear ~/fedmekt-operator c000                     # after the reload: delete what it left
    fedmekt provision bridge ~/fedmekt-operator ward-3 --federation demo --device c000 --device c001
                                                                         # a site broker's bridge to the lab

The operator folder keeps the CA key and every login's credentials; the broker folder gets
only what mosquitto serves. Reload mosquitto (SIGHUP) after ``add`` / ``remove``. A device's
credentials also carry the run epoch its federation has reached (``--aggregator-state``: the
aggregator's state folder, or ``--min-epoch``): the new gateway never follows an older run, so a
replayed old manifest or package cannot give it an old model.
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
    q.add_argument("--bind", default=None,
                   help="IP address the listener binds, or 'all' for every interface (default: the first --host "
                        "when it is an IP address, else all)")
    q.add_argument("--control-port", type=int, default=None,
                   help="port of the control listener for the aggregator and monitors (default --port + 1): "
                        "idle sockets on the devices' listener cannot take its slots")
    q.add_argument("--control-bind", default="127.0.0.1",
                   help="IP address of the control listener (default 127.0.0.1: the aggregator runs on the broker's "
                        "machine), or 'all'")
    q.add_argument("--broker-dir", type=Path, default=None,
                   help="folder mosquitto reads (default OPERATOR/broker), e.g. /etc/mosquitto/fedmekt")
    q.add_argument("--days", type=int, default=825, help="server certificate lifetime in days (default 825)")
    q = sub.add_parser("add", help="add or re-key a login (device, aggregator, monitor)")
    q.add_argument("operator", type=Path)
    q.add_argument("name", help="login name == MQTT client id; a device's fedmekt client id, e.g. c000")
    q.add_argument("--role", default="device", help=ROLE_HELP)
    q.add_argument("--federation", action="append", default=[],
                   help="federation the login serves (exactly one for a device or an aggregator; a monitor: "
                        "repeatable, default all)")
    q.add_argument("--password-stdin", action="store_true", help="read the password from stdin (default random)")
    q.add_argument("--aggregator-state", type=Path, default=None,
                   help="a device: the aggregator's --state-dir, whose run counter of each --federation becomes the "
                        "device's floor (it refuses runs older than the federation's current one)")
    q.add_argument("--min-epoch", type=int, default=None,
                   help="a device: refuse runs older than this epoch (instead of reading --aggregator-state)")
    q = sub.add_parser("remove", help="revoke a login")
    q.add_argument("operator", type=Path)
    q.add_argument("name")
    q = sub.add_parser("clear", help="after `remove` and a reload: delete the retained messages the login left")
    q.add_argument("operator", type=Path)
    q.add_argument("name")
    q.add_argument("--broker", default=None,
                   help="mqtts://HOST:PORT of the broker (default the control listener of `init`)")
    q = sub.add_parser("bridge", help="a site broker's login and its mosquitto bridge config to the lab broker")
    q.add_argument("operator", type=Path)
    q.add_argument("site", help="the site broker's login name on the lab broker, e.g. ward-3")
    q.add_argument("--federation", required=True, help="the federation it relays (one; another one: another bridge)")
    q.add_argument("--device", action="append", required=True, help="a gateway behind the site broker (repeatable)")
    q.add_argument("--lab-broker", default=None,
                   help="mqtts://HOST:PORT[,…] the site reaches the lab by (default the address of `init`)")
    q.add_argument("--site-dir", type=Path, default=None,
                   help="where the site broker will read the files (default OPERATOR/sites/SITE), "
                        "e.g. /etc/mosquitto/fedmekt-bridge")
    q.add_argument("--password-stdin", action="store_true", help="read the password from stdin (default random)")
    p.set_defaults(func=run)


def _password(args) -> str | None:
    return sys.stdin.readline().rstrip("\n") if args.password_stdin else None


def run(args) -> int:
    from fedmekt.provisioning import registry

    if args.action == "init":
        dep = registry.init(args.operator, tuple(args.host), args.port, args.broker_dir, args.days, args.bind,
                            args.control_port, args.control_bind)
        where = "every interface" if dep.bind == registry.ALL_INTERFACES else dep.bind
        print(f"CA in {args.operator}; broker files in {dep.broker_dir}: "
              f"include {dep.broker_dir / 'fedmekt.conf'} in mosquitto's configuration; it listens on {where} "
              f"port {dep.port} for devices, and on {dep.control_url} for the aggregator and monitors")
    elif args.action == "add":
        floors = registry.run_floors(tuple(args.federation), args.aggregator_state, args.min_epoch)
        bundle = registry.add(args.operator, args.name, args.role, tuple(args.federation), _password(args),
                              min_epoch=floors)
        print(f"{args.role} {args.name}: copy {bundle}/ to where it runs; reload mosquitto (SIGHUP)")
        if args.role == "device" and not any(floors.values()):
            print(f"note: {args.name} trusts any signed run until it follows one: give --aggregator-state (or "
                  f"--min-epoch) once the federation has run, so a replayed older run cannot give it an old model")
    elif args.action == "bridge":
        from fedmekt.provisioning.bridge import BRIDGE_CONF, provision_bridge

        folder = provision_bridge(args.operator, args.site, args.federation, tuple(args.device), args.lab_broker,
                                  args.site_dir, _password(args))
        print(f"bridge {args.site}: reload the lab's mosquitto (SIGHUP); copy {folder}/ to the site broker "
              f"and include its {BRIDGE_CONF} (restart the site's mosquitto: bridges are not reloaded)")
    elif args.action == "clear":
        cleared = registry.clear(args.operator, args.name, args.broker)
        print(f"cleared {cleared} retained message(s) {args.name} left on the broker")
    else:
        registry.remove(args.operator, args.name)
        print(f"removed {args.name}; reload mosquitto (SIGHUP), then delete the retained messages it left: "
              f"fedmekt provision clear {args.operator} {args.name}")
    return 0
