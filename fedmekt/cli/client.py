"""``fedmekt client``: the gateway side of a federation over MQTT.

    fedmekt client --broker mqtt://lab:1883 --client-id c007 --source udp:9000 --modalities acce:3

Reads its sensor source into the local store (finite sources first, live ones in the background),
announces its modalities, trains on the store whenever the aggregator selects it, uploads
embeddings (or parameters), and keeps its model state next to the store so a restart resumes.
Keeps running across federation runs (--exit-when-done stops at the end of one). One training
thread by default (``threads`` in the federation config).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import threading
from pathlib import Path

from edge_client.sources import __doc__ as SOURCES_DOC
from fedmekt.cli.broker_args import add_broker_args, link_options

log = logging.getLogger("edge_client")


def register(subparsers) -> None:
    p = subparsers.add_parser("client", help="run a gateway client of a federation over MQTT",
                              description=__doc__ + "\n" + SOURCES_DOC,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=True)
    p.add_argument("--client-id", required=True, help="this device's id (also its MQTT username by default)")
    p.add_argument("--federation", default="demo", help="federation name (topic prefix fedmekt/<name>/, default demo)")
    p.add_argument("--source", default=None, help="where samples come from (see above); omit to use the store as is")
    p.add_argument("--modalities", default=None, help="name:channels,… of a raw source, e.g. acce:3,gyro:3")
    p.add_argument("--store", type=Path, default=None, help="SQLite sample store (default ./fedmekt-<id>/store.sqlite)")
    p.add_argument("--max-samples", type=int, default=200_000, help="store retention in samples (default 200000)")
    p.add_argument("--bundle", type=Path, default=None, help="provisioned manifest + proxy set (skips the download)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root for split:/replay: sources")
    p.add_argument("--speed", type=float, default=math.inf, help="replay pace (1 = real time; default: fast)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit when the federation run ends (default: keep running and join the next run)")
    p.set_defaults(func=run)


def run(args) -> int:
    from edge_client.agent import AgentOptions, EdgeAgent
    from edge_client.sources import ingest, open_source, parse_modalities
    from fedmekt.errors import UserError
    from sensors.store import SampleStore

    if args.max_samples < 1:
        raise UserError("--max-samples must be >= 1")
    store_path = args.store or Path(f"fedmekt-{args.client_id}") / "store.sqlite"
    store = SampleStore(store_path, max_samples=args.max_samples)
    info_path = store_path.with_suffix(".json")  # remembers whether the stored samples are normalised
    normalised = json.loads(info_path.read_text()).get("normalised", False) if info_path.exists() else None
    live = None
    if args.source:
        opened = open_source(args.source, args.client_id, parse_modalities(args.modalities), args.data_dir, args.speed)
        if normalised is not None and normalised != opened.normalised and store.count():
            raise UserError(f"store {store_path} holds {'normalised' if normalised else 'raw'} samples; "
                            "use another --store for this source")
        normalised = opened.normalised
        info_path.write_text(json.dumps({"normalised": normalised}))
        if opened.live:
            live = threading.Thread(target=ingest, args=(opened.source, store), daemon=True, name="ingest")
            live.start()
            while not store.count():
                live.join(0.5)
                if not live.is_alive():
                    raise UserError(f"source {args.source} ended before delivering any sample")
        else:
            n = ingest(opened.source, store)
            log.info("%s: %d samples read into %s (%d stored)", args.client_id, n, store_path, store.count())
    if not store.count():
        raise UserError(f"store {store_path} is empty: give a --source")
    agent = EdgeAgent(args.broker, AgentOptions(
        client_id=args.client_id, federation=args.federation, store=store, state_dir=store_path.parent,
        bundle=args.bundle, link=link_options(args, args.client_id, username=args.client_id),
        normalise=not normalised, exit_when_done=args.exit_when_done))
    rounds = agent.run()
    print(f"{args.client_id}: federation finished; trained {rounds} round(s)")
    return 0
