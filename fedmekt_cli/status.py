"""``fedmekt status``: what the broker says about a federation right now.

    fedmekt status --broker mqtt://lab:1883 [--federation demo] [--json]

Prints the run (its name, the folder ``fedmekt runs`` lists on the aggregator's machine, and its
federation run id, as the signed manifest names them), the current round (numbered from 1, as the
progress bars count), the uploads of that round seen while watching, the last round's metrics
(retained by the aggregator) and every client's presence, from the retained topics. Exit status 0 while a round is in progress, 1 when nothing runs
for that federation (never started, or finished) — so scripts can wait on it.
"""

from __future__ import annotations

import argparse
import json
import time

from fedmekt.printable import printable
from fedmekt.wire.runs import run_label
from fedmekt_cli.broker_args import add_broker_args
from fedmekt_cli.output_format import add_format_args


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show a federation's round, uploads, metrics and clients from the broker",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=True)
    p.add_argument("--federation", default="demo", help="federation name (default demo, as simulate and client)")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to collect retained messages (default 1.5)")
    add_format_args(p, "one JSON object")
    p.set_defaults(func=run)


def collect(args) -> dict:
    """Watch the federation's topics for ``args.wait`` seconds; what they say as a plain dict."""
    from fedmekt_cli.broker_args import link_options
    from fedmekt.observe.live_view import FederationView
    from fedmekt.transport.mqtt import MqttLink

    view = FederationView(args.federation)
    opts = link_options(args, f"status-{time.monotonic_ns()}")
    opts.session_expiry = 0
    with MqttLink(args.broker, opts, subscriptions=view.subscriptions).connect() as link:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            msg = link.get(timeout=0.1)
            if msg is not None:
                view.absorb(msg)
    return view.summary()


def render(s: dict) -> str:
    fed = s["federation"]
    if s["run"] or s["federation_run"]:
        fed += f", run {run_label(s['federation_run'] or '', s['run'] or '')}"
    if s["finished"]:
        lines = [f"federation {fed}: finished after {s['rounds_completed']} rounds (nothing running)"]
    elif s["running"]:
        lines = [f"federation {fed}: round {s['round_index'] + 1} in progress, selected {', '.join(s['selected'])}, "
                 f"deadline in {s['deadline_s']:.0f} s",
                 f"  uploads of this round seen while watching: {len(s['uploads_seen'])} of {len(s['selected'])}"
                 + (f" ({', '.join(s['uploads_seen'])})" if s["uploads_seen"] else "")]
    else:
        lines = [f"federation {fed}: nothing running (no round announced on this broker)"]
    m = s["last_metrics"]   # RoundRow.view(): numbered from 1
    if m:
        f1 = ", ".join(f"{k} {v:.3f}" for k, v in m["f1"].items())
        run = run_label(m["federation_run"] or "", m["run"] or "?")
        lines.append(f"  last round done: {m['round']} of run {run}: {_or_q(m['absorbed'])} of "
                     f"{_or_q(m['selected'])} uploads, paper F1 {f1 or '–'}")
    online = sum(1 for c in s["clients"].values() if c["state"] == "online")
    lines.append(f"{len(s['clients'])} clients known, {online} online")
    for cid, c in s["clients"].items():
        lines.append(f"  {cid}: {c['state']}" + (f" ({', '.join(c['modalities'])})" if c["modalities"] else ""))
    lines += [f"unreadable message on {u}" for u in s["unreadable"]]
    return "\n".join(printable(line) for line in lines)  # device text never acts on the terminal


def _or_q(value) -> str:
    return "?" if value is None else str(value)


def run(args) -> int:
    s = collect(args)
    print(json.dumps(s, indent=1) if args.json else render(s))
    return 0 if s["running"] else 1
