"""``fedmekt client``: the gateway side of a federation over MQTT.

    fedmekt client --broker mqtt://lab:1883 --client-id c007 --source udp:9000 --modalities acce:3

Reads its sensor source into the local store (finite sources first, live ones in the background),
announces its modalities, trains on the store whenever the aggregator selects it, uploads
embeddings (or parameters), and keeps its model state next to the store so a restart resumes.
Keeps running across federation runs (--exit-when-done stops at the end of one). One training
thread by default (``threads`` in the federation config).

With --public-key it acts only on control messages (federation manifest, round announcements,
"done") signed with the aggregator's key, and also receives its signed model packages, verifies
them and installs those of the run it serves next to the store (``models/``; a refused package
leaves the model in service). With --infer it classifies its source's samples as they arrive with
the model in service and publishes the predictions on ``clients/<id>/inference``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_client.sources import __doc__ as SOURCES_DOC
from fedmekt.device_classes import CLASSES
from fedmekt_cli.broker_args import add_broker_args, check_broker, link_options, min_epoch
from fedmekt_cli.config_file import add_config_arg, apply_config, require

log = logging.getLogger("edge_client")
# oneDNN (torch's CPU kernels) caches a kernel per input shape, up to 1024 of them: a training gateway's RSS grew
# ~20 MiB a round without end (bench/bench_gateway.py). Set before torch loads; an explicit setting wins.
ONEDNN_CACHE_CAPACITY = "8"
TRAIN_NOTE = "training needs the [train] extra; --infer-only does not"


def NEEDS_TRAIN(args) -> bool:  # noqa: N802 (the attribute fedmekt_cli.main reads of every command)
    return not apply_config(args).infer_only  # --config may set infer-only


def register(subparsers) -> None:
    p = subparsers.add_parser("client", help="run a gateway client of a federation over MQTT",
                              description=__doc__ + "\n" + SOURCES_DOC,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=False)  # required, on the command line or in --config
    p.add_argument("--client-id", help="this device's id (also its MQTT username by default); required")
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
    p.add_argument("--public-key", type=Path, default=None,
                   help="the aggregator's Ed25519 public key: verify its control messages, and receive, verify "
                        "and install its model packages")
    p.add_argument("--infer", action="store_true",
                   help="with --public-key: recognise activities on the source's samples as they arrive and "
                        "publish the predictions")
    p.add_argument("--infer-only", action="store_true",
                   help="with --public-key and --source: receive-only gateway, no store and no training (runs on an "
                        "inference-only install, without torch): install verified packages, publish predictions")
    p.add_argument("--min-epoch", type=int, default=None,
                   help="refuse federation runs older than this epoch (default: the provisioned one in --credentials, "
                        "else none); the newest epoch followed is kept beside the store either way")
    p.add_argument("--device-class", choices=CLASSES, default=None,
                   help="the encoder this device affords: small (Pi Zero 2 W class), standard, large (Pi 5 class); "
                        "the federation must accept it; only packages of this class are installed (default: the "
                        "federation's only class, standard in a mixed fleet; docs/raspberry-pi.md)")
    p.add_argument("--accept-hand-exported", action="store_true",
                   help="with --public-key: also install packages exported by hand (fedmekt export: bound to no run, "
                        "so nothing proves they are not older than what the federation publishes)")
    add_config_arg(p)
    p.set_defaults(func=run)


@dataclass
class _RecognisingStore:
    """Where --infer ingests: each raw batch is stored, then classified by the agent's model in service."""

    store: object
    agent: object | None = None  # set once the agent exists; batches before that are only stored

    def append(self, batch) -> None:
        self.store.append(batch)
        if self.agent is not None:
            self.agent.recognise(batch)


def _first_missing(folder: Path) -> Path | None:
    """The outermost not-yet-existing directory of ``folder``: this invocation creates it."""
    missing = None
    for d in (folder, *folder.parents):
        if d.exists():
            break
        missing = d
    return missing


def run(args) -> int:
    from fedmekt.errors import UserError
    from sensors.store import SampleStore

    apply_config(args)
    require(args, "broker", "client_id")
    check_broker(args.broker)  # the config's URL, refused before the source is read
    if args.infer_only:
        from fedmekt_cli.client_infer_only import run_infer_only

        return run_infer_only(args)
    if args.max_samples < 1:
        raise UserError("--max-samples must be >= 1")
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)
    if args.infer and (args.public_key is None or not args.source):
        raise UserError("--infer needs --public-key (the model to run) and a --source (the samples)")
    public_key = None
    if args.public_key is not None:
        from export.package import load_public_key

        public_key = load_public_key(args.public_key)
    store_path = args.store or Path(f"fedmekt-{args.client_id}") / "store.sqlite"
    created = _first_missing(store_path.parent)
    store = SampleStore(store_path, max_samples=args.max_samples)
    background: list[threading.Thread] = []
    agent = None
    try:
        agent = _prepare(args, store, store_path, public_key, background)
        rounds = agent.run()
    except BaseException:
        if created is not None and not background and (agent is None or not agent.connected_once):
            store.close()  # nothing reached the broker: do not leave behind the folder this invocation made
            shutil.rmtree(created, ignore_errors=True)
        raise
    print(f"{args.client_id}: federation finished; trained {rounds} round(s)")
    return 0


def _finite_source_key(args) -> str:
    """What names a finite source's samples: its spec and data root, and for a file of samples its size and time
    (a file written anew is read again; a split's config may change its rounds without changing its data)."""
    kind, _, rest = args.source.partition(":")
    path, stamp = Path(rest), ""
    if kind in ("csv", "json") and path.is_file():
        st = path.stat()
        stamp = f" {st.st_size} {st.st_mtime_ns}"
    return f"{args.source} {args.data_dir or ''}{stamp}"


def _prepare(args, store, store_path: Path, public_key, background: list[threading.Thread]):
    """Read the source into the store (live ones, and every source with --infer, in ``background``); the agent."""
    from edge_client.agent import AgentOptions, EdgeAgent
    from edge_client.sources import ingest, open_source, parse_modalities
    from fedmekt.errors import UserError
    from fedmekt.transport.mqtt import check_reachable
    from fedmekt.wire.topics import Topics

    link = link_options(args, args.client_id, username=args.client_id,  # bad options refused before the store fill
                        session_topic=Topics(args.federation).session(args.client_id),
                        takeover="alert")  # a stolen login must not switch it off
    floor = min_epoch(args)
    info_path = store_path.with_suffix(".json")  # whether the stored samples are normalised; finite sources read
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    normalised = info.get("normalised", False) if info_path.exists() else None
    sink = _RecognisingStore(store) if args.infer else store
    if args.source:
        opened = open_source(args.source, args.client_id, parse_modalities(args.modalities), args.data_dir, args.speed)
        if normalised is not None and normalised != opened.normalised and store.count():
            raise UserError(f"store {store_path} holds {'normalised' if normalised else 'raw'} samples; "
                            "use another --store for this source")
        if args.infer and opened.normalised:
            raise UserError(f"--infer needs raw samples; {args.source} delivers normalised ones (use replay:, "
                            "csv:, udp:, serial:, …)")
        normalised = opened.normalised
        check_reachable(args.broker)  # before a store fill that may take minutes (a replay reads 147k samples)
        info["normalised"] = normalised
        info_path.write_text(json.dumps(info))
        if opened.live or args.infer:  # --infer: samples flow while the agent runs, even from a finite source
            live = threading.Thread(target=ingest, args=(opened.source, sink), daemon=True, name="ingest")
            live.start()
            background.append(live)
            while not store.count():
                live.join(0.5)
                if not live.is_alive() and not store.count():  # a fast finite source may be done already
                    raise UserError(f"source {args.source} ended before delivering any sample")
        elif (key := _finite_source_key(args)) in info.get("read", []):   # a restarted gateway: read it once
            log.info("%s: %s was read into %s before (%d stored); not read again", args.client_id, args.source,
                     store_path, store.count())
        else:
            n = ingest(opened.source, store)
            log.info("%s: %d samples read into %s (%d stored)", args.client_id, n, store_path, store.count())
            info["read"] = [*info.get("read", []), key]
            info_path.write_text(json.dumps(info))
    if not store.count():
        raise UserError(f"store {store_path} is empty: give a --source")
    from edge_client.lean import lean_process

    lean_process()  # fixed malloc mmap threshold, no torch._dynamo: less peak RSS (edge_client/lean.py)
    models = None
    if public_key is not None:
        from edge_client.inference import ModelService

        models = ModelService(store_path.parent / "models", public_key, args.federation,
                              sorted(store.channels)[0], accept_hand_exported=args.accept_hand_exported,
                              device_class=args.device_class)
    agent = EdgeAgent(args.broker, AgentOptions(
        client_id=args.client_id, federation=args.federation, store=store, state_dir=store_path.parent,
        bundle=args.bundle, link=link, normalise=not normalised, exit_when_done=args.exit_when_done, models=models,
        public_key=public_key, min_epoch=floor, device_class=args.device_class))
    if args.infer:
        sink.agent = agent
    return agent
