"""``fedmekt status``: what the broker's retained messages say about a federation right now.

    fedmekt status --broker mqtt://lab:1883 [--federation demo]

Prints the current round announcement (or that the federation finished) and every client's
presence (online with its modalities / offline), read from the retained topics.
"""

from __future__ import annotations

import argparse
import time

from fedmekt.cli.broker_args import add_broker_args


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show a federation's round and client presence from the broker",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=True)
    p.add_argument("--federation", default="demo", help="federation name (default demo)")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to collect retained messages (default 1.5)")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedmekt.cli.broker_args import link_options
    from fedmekt.mqtt import MqttLink
    from fedmekt.wire import federation as fedwire
    from fedmekt.wire.codec import WireError
    from fedmekt.wire.topics import Topics

    topics = Topics(args.federation)
    clients: dict[str, str] = {}
    announcement = None
    opts = link_options(args, f"status-{time.monotonic_ns()}")
    opts.session_expiry = 0
    with MqttLink(args.broker, opts, subscriptions=[topics.status_all, topics.rounds]).connect() as link:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            msg = link.get(timeout=0.1)
            if msg is None or not msg.payload:
                continue
            try:
                if msg.topic == topics.rounds:
                    announcement = fedwire.Announcement.from_bytes(msg.payload)
                else:
                    status = fedwire.Status.from_bytes(msg.payload)
                    cid = msg.topic.split("/")[-2]
                    clients[cid] = status.state + (f" ({', '.join(status.modalities)})" if status.modalities else "")
            except WireError as exc:
                print(f"unreadable message on {msg.topic}: {exc.reason}")
    if announcement is None:
        print(f"federation {args.federation}: no round announced")
    elif announcement.done:
        print(f"federation {args.federation}: finished after {announcement.rounds} rounds")
    else:
        plan = announcement.plan
        left = announcement.deadline - time.time()
        print(f"federation {args.federation}: round {plan['round']}, selected {', '.join(plan['selected'])}, "
              f"deadline in {left:.0f} s")
    online = sum(1 for s in clients.values() if s.startswith("online"))
    print(f"{len(clients)} clients known, {online} online")
    for cid in sorted(clients):
        print(f"  {cid}: {clients[cid]}")
    return 0
