"""``fedmekt dashboard``: a live, read-only web page of a federation for the lab server.

    fedmekt dashboard --broker mqtt://lab:1883 --federation demo        # then open http://127.0.0.1:8765/

Shows the clients online with their modalities and when each was last heard from, the current
round and its uploads, and the paper F1 and KiB per round as the rounds finish (curves start when
the dashboard does; the broker retains only the last round). It only subscribes: give it a login
that may read the federation's topics (the provisioned ``monitor``). Bound to 127.0.0.1 unless
--bind says otherwise; anyone who can reach the port sees what the broker says.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

from fedmekt_cli.broker_args import add_broker_args
from fedmekt.errors import UserError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("dashboard", help="serve a live read-only web page of a running federation",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=True)
    p.add_argument("--federation", default="demo", help="federation name (default demo, as simulate and status)")
    p.add_argument("--http-port", type=int, default=8765, help="port of the web page (default 8765; 0: any free one)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 for the whole network)")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedmekt.config import FEDERATION_NAME

    if not FEDERATION_NAME.fullmatch(args.federation):
        raise UserError(f"--federation {args.federation!r}: a name of letters, digits, '.', '_' or '-'")
    if not 0 <= args.http_port <= 65535:
        raise UserError(f"--http-port {args.http_port}: must be 0-65535")
    from fedmekt_cli.broker_args import link_options
    from fedmekt.observe.dashboard.live import LiveView
    from fedmekt.observe.dashboard.server import DashboardServer, is_loopback

    # parses the broker URL: a typo fails before anything binds or connects
    live = LiveView(args.broker, link_options(args, f"dashboard-{time.monotonic_ns()}"), args.federation)
    try:
        server = DashboardServer(args.bind, args.http_port, state=live.state)
    except OSError as exc:
        raise UserError(f"cannot serve on {args.bind}:{args.http_port}: {exc.strerror or exc}") from None
    try:
        live.start()
        if not is_loopback(args.bind):
            log.warning("serving on %s: anyone who can reach port %d sees the federation", args.bind,
                        server.server_address[1])
        print(f"dashboard of federation {args.federation} on {server.url} (read-only; Ctrl-C stops)", flush=True)
        server.serve_in_thread()
        threading.Event().wait()  # until Ctrl-C or SIGTERM (raised in this thread by the CLI)
    finally:
        server.close()
        live.close()
    return 0
