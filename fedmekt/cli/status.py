"""``fedmekt status``: what the broker says about a federation right now.

    fedmekt status --broker mqtt://lab:1883 [--federation demo] [--json]

Prints the current round (numbered from 1, as the progress bars count), the uploads of that round
seen while watching, the last round's metrics (retained by the aggregator) and every client's
presence, from the retained topics. Exit status 0 while a round is in progress, 1 when nothing runs
for that federation (never started, or finished) — so scripts can wait on it.
"""

from __future__ import annotations

import argparse
import json
import time

from fedmekt.cli.broker_args import add_broker_args


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show a federation's round, uploads, metrics and clients from the broker",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=True)
    p.add_argument("--federation", default="demo", help="federation name (default demo, as simulate and client)")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to collect retained messages (default 1.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def collect(args) -> dict:
    """Watch the federation's topics for ``args.wait`` seconds; what they say as a plain dict."""
    from fedmekt.cli.broker_args import link_options
    from fedmekt.mqtt import MqttLink
    from fedmekt.wire import federation as fedwire
    from fedmekt.wire.codec import WireError
    from fedmekt.wire.topics import Topics

    topics = Topics(args.federation)
    depth = len(topics.prefix.split("/"))
    clients: dict[str, dict] = {}
    uploads: dict[int, set[str]] = {}
    announcement, metrics, unreadable = None, None, []
    opts = link_options(args, f"status-{time.monotonic_ns()}")
    opts.session_expiry = 0
    subscriptions = [topics.status_all, topics.rounds, topics.metrics, topics.uploads_all]
    with MqttLink(args.broker, opts, subscriptions=subscriptions).connect() as link:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            msg = link.get(timeout=0.1)
            if msg is None or not msg.payload:
                continue
            parts = msg.topic.split("/")[depth:]
            try:
                if msg.topic == topics.rounds:
                    announcement = fedwire.Announcement.from_bytes(msg.payload)
                elif msg.topic == topics.metrics:
                    metrics = _metrics(msg.payload)
                elif len(parts) == 5 and parts[2] == "upload" and parts[3].isdigit():
                    uploads.setdefault(int(parts[3]), set()).add(parts[1])
                elif len(parts) == 3 and parts[2] == "status":
                    status = fedwire.Status.from_bytes(msg.payload)
                    clients[parts[1]] = {"state": status.state, "modalities": list(status.modalities)}
            except WireError as exc:
                unreadable.append(f"{msg.topic}: {exc.reason}")
    out = {"federation": args.federation, "running": bool(announcement and not announcement.done),
           "finished": bool(announcement and announcement.done), "rounds_completed": None, "round_index": None,
           "selected": [], "deadline_s": None, "uploads_seen": [], "last_metrics": metrics,
           "clients": dict(sorted(clients.items())), "unreadable": unreadable}
    if announcement is not None and announcement.done:
        out["rounds_completed"] = announcement.rounds
    elif announcement is not None:
        rnd = int(announcement.plan.get("round", -1))
        out.update(round_index=rnd, selected=list(announcement.plan.get("selected", [])),
                   deadline_s=round(announcement.deadline - time.time(), 1), uploads_seen=sorted(uploads.get(rnd, ())))
    return out


def _metrics(payload: bytes) -> dict | None:
    """The aggregator's last round row, reduced to what a person reads (None when it is not a JSON object)."""
    try:
        row = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    keep = ("run", "round", "selected", "absorbed", "bytes_up", "bytes_down")
    return {k: v for k, v in row.items() if k in keep or str(k).startswith("f1_paper_")}


def render(s: dict) -> str:
    fed = s["federation"]
    if s["finished"]:
        lines = [f"federation {fed}: finished after {s['rounds_completed']} rounds (nothing running)"]
    elif s["running"]:
        lines = [f"federation {fed}: round {s['round_index'] + 1} in progress, selected {', '.join(s['selected'])}, "
                 f"deadline in {s['deadline_s']:.0f} s",
                 f"  uploads of this round seen while watching: {len(s['uploads_seen'])} of {len(s['selected'])}"
                 + (f" ({', '.join(s['uploads_seen'])})" if s["uploads_seen"] else "")]
    else:
        lines = [f"federation {fed}: nothing running (no round announced on this broker)"]
    m = s["last_metrics"]
    if m and isinstance(m.get("round"), int):
        f1 = ", ".join(f"{k[len('f1_paper_'):]} {v:.3f}" for k, v in sorted(m.items())
                       if k.startswith("f1_paper_") and isinstance(v, (int, float)))
        lines.append(f"  last round done: {m['round'] + 1} of run {m.get('run', '?')}: {m.get('absorbed', '?')} of "
                     f"{m.get('selected', '?')} uploads, paper F1 {f1 or '–'}")
    online = sum(1 for c in s["clients"].values() if c["state"] == "online")
    lines.append(f"{len(s['clients'])} clients known, {online} online")
    for cid, c in s["clients"].items():
        lines.append(f"  {cid}: {c['state']}" + (f" ({', '.join(c['modalities'])})" if c["modalities"] else ""))
    lines += [f"unreadable message on {u}" for u in s["unreadable"]]
    return "\n".join(lines)


def run(args) -> int:
    s = collect(args)
    print(json.dumps(s, indent=1) if args.json else render(s))
    return 0 if s["running"] else 1
