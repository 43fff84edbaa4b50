"""``fedmekt aggregator``: the lab-server side of a federation over MQTT.

    fedmekt aggregator --broker mqtt://host:1883 --config federation.toml [--out DIR]

Loads the server's data (proxy, labelled and test sets of the config's dataset split), publishes
the federation manifest and the proxy set once (retained), waits for clients, then runs the
configured rounds: announce, collect uploads until the quorum or the deadline, update, evaluate,
checkpoint. Restarted with the same --out it resumes after the last completed round; a fresh run
gets the next epoch of the run counter kept in --state-dir (default: the folder holding --out), which
orders runs for the gateways whatever the server's clock says: keep that folder like the signing key.
With --signing-key it signs the manifest and every announcement, and also publishes the global
model as a signed ONNX package (retained, ``models/``, bound to this run) every --package-every
rounds and after the last one (one before the last round is built on a worker thread while the rounds go
on); gateways started with the matching --public-key verify the control messages and install the packages.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from fedmekt_cli.broker_args import add_broker_args, link_options

log = logging.getLogger("aggregator")
NEEDS_TRAIN = True  # the server update runs torch


def register(subparsers) -> None:
    p = subparsers.add_parser("aggregator", help="run the aggregator of a federation over MQTT",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=True)
    p.add_argument("--config", type=Path, required=True, help="federation config (TOML, FederationConfig keys)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/aggregator-<federation>)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default FEDMEKT_DATA_DIR or ../shared/data)")
    p.add_argument("--wait-clients", type=int, default=0,
                   help="clients that must be online before round 0, and before the next round when every "
                        "client went offline at once (default: per_round)")
    p.add_argument("--wait-timeout", type=float, default=600.0, help="seconds to wait for them (default 600)")
    p.add_argument("--min-clients", type=int, default=1,
                   help="a later round opens once this many clients are online with fresh proof and not "
                        "sitting out a backoff, or after --wait-timeout s with those there (default 1)")
    p.add_argument("--round-timeout", type=float, default=600.0, help="deadline per round in seconds (default 600)")
    p.add_argument("--resend-after", type=float, default=10.0,
                   help="seconds without an upload before the clients still owing one are asked again "
                        "(doubling each time; 0 = never; default 10)")
    p.add_argument("--quorum", type=float, default=1.0,
                   help="fraction of the selected clients whose uploads close a round (default 1.0)")
    p.add_argument("--chunk-kib", type=int, default=256, help="MQTT payload size limit in KiB (default 256)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="also write the provisioning bundle (manifest + proxy set) for clients to this file")
    p.add_argument("--signing-key", type=Path, default=None,
                   help="Ed25519 private key (fedmekt export keygen): sign the control messages and publish signed "
                        "model packages to the clients")
    p.add_argument("--package-every", type=int, default=10,
                   help="rounds between model packages with --signing-key (0 = only at the end; default 10)")
    p.add_argument("--client-ids", default=None,
                   help="the federation's provisioned client ids, comma-separated: any other id's status is ignored "
                        "(default: any id)")
    p.add_argument("--answer-rate", type=float, default=500.0,
                   help="answers per second a new liveness challenge may draw: gateways spread their answers at "
                        "random over fleet/rate s, at most a quarter of the proof's 120 s, the last round's "
                        "duration and their heartbeat (0 = all at once; default 500)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where the federation's run counter lives, across runs (default: the folder holding --out)")
    p.add_argument("--min-epoch", type=int, default=1,
                   help="a fresh run's epoch is at least this: after losing --state-dir, one above the newest epoch "
                        "the gateways follow (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def load_server_split(cfg, data_dir: Path | None):
    """The split every party derives from the config (the aggregator uses proxy/labelled/test)."""
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    recordings = load_dataset(cfg.dataset, data_dir)
    split = make_split(recordings, cfg.pair, scheme=cfg.partition, seed=cfg.seed, clients=cfg.clients)
    return dataclasses.replace(split, clients=[]), split.manifest["rate_hz"]  # client data stays on devices


def run(args) -> int:
    from fedmekt.config import load_config
    from fedmekt.errors import UserError
    from fedmekt.wire.manifest import MAX_ROUND_TIMEOUT
    from fedmekt.wire.runs import MAX_EPOCH
    from fedmekt_cli.run_record import RunState, checked_run_id, refuse_used_folder

    cfg = load_config(args.config)   # bad input is refused before torch loads (seconds)
    out = args.out or Path("runs") / f"aggregator-{cfg.federation}"
    refuse_used_folder(out, resumes=True)
    name = checked_run_id(out)
    done = RunState.read(out)
    if done is not None and done.state == "finished" and int(done.info.get("rounds", 0)) >= cfg.rounds:
        raise UserError(f"{out} holds a finished run of {done.info['rounds']} rounds, nothing to resume: pass a new "
                        "--out for a new run, or more rounds in the config to extend it")
    if args.package_every < 0:
        raise UserError("--package-every must be >= 0")
    signing_key = None
    if args.signing_key is not None:
        from export.package import load_private_key

        signing_key = load_private_key(args.signing_key)
    if not 0 < args.quorum <= 1:
        raise UserError("--quorum must be in (0, 1]")
    if args.min_clients < 1:
        raise UserError("--min-clients must be at least 1")
    if not 0 < args.round_timeout <= MAX_ROUND_TIMEOUT:  # announcements carry it: gateways refuse longer ones
        raise UserError(f"--round-timeout must be in (0, {MAX_ROUND_TIMEOUT:.0f}] seconds")
    if not 1 <= args.min_epoch <= MAX_EPOCH:
        raise UserError(f"--min-epoch must be 1..{MAX_EPOCH}")
    if not 0 <= args.resend_after < float("inf"):
        raise UserError("--resend-after must be a number of seconds >= 0")
    if not 0 <= args.answer_rate < float("inf"):
        raise UserError("--answer-rate must be a number of answers per second >= 0")
    from fedmekt.wire.codec import WireLimits

    try:
        limits = WireLimits(chunk_size=args.chunk_kib * 1024)
    except ValueError as exc:
        raise UserError(f"--chunk-kib: {exc}") from None
    from fedmekt.run_counter import epoch_file, read_epoch
    from fedmekt.transport.mqtt import check_reachable
    from fedmekt.wire.topics import Topics

    link = link_options(args, f"{cfg.federation}-aggregator", session_topic=Topics(cfg.federation).aggregator_session,
                        kick_limit=5)  # a foreign tool on our login (no token) ends the run instead of fighting it
    read_epoch(epoch_file(args.state_dir or out.resolve().parent, cfg.federation))  # a damaged run counter is said
    check_reachable(args.broker)  # as a broker that refuses: before torch and the split load (seconds)
    from aggregator.service import Aggregator, AggregatorOptions
    from fedmekt.observe.html_report import write_html_report
    from fedmekt.experiment.reference_rows import raw_features_final
    from fedmekt.observe.report import write_report
    from fedmekt.wire import manifest as fedwire
    from fedmekt_cli.run_record import RunRecord, masked_url
    from fedmekt_cli.summary import f1_figures, f1_table

    split, rate = load_server_split(cfg, args.data_dir)
    if args.bundle:
        manifest, frames = fedwire.build(cfg, split, limits, name=name)
        fedwire.save_bundle(args.bundle, manifest, frames)
        print(f"provisioning bundle written to {args.bundle}")
    options = AggregatorOptions(out=out, name=name, wait_clients=args.wait_clients, wait_timeout=args.wait_timeout,
                                min_clients=args.min_clients, resend_after=args.resend_after,
                                round_timeout=args.round_timeout, quorum=args.quorum, limits=limits,
                                progress=not args.no_progress, signing_key=signing_key,
                                package_every=args.package_every, state_dir=args.state_dir, min_epoch=args.min_epoch,
                                answer_rate=args.answer_rate,
                                known_clients=frozenset(filter(None, args.client_ids.split(",")))
                                if args.client_ids else None)
    agg = Aggregator(cfg, split, args.broker, options, link, rate_hz=rate)
    with RunRecord(out, "aggregator", algorithm=cfg.algorithm, dataset=cfg.dataset, rounds=cfg.rounds,
                   federation=cfg.federation, broker=masked_url(args.broker)) as record:
        result = agg.run()
        record.update(federation_run=agg.run_id)
        write_report(out, [result])
        figures = f1_figures(result, raw_features_final(cfg, split))
        record.note("\n".join([f"{result.name}: {len(result.rows)} rounds", *f1_table(figures)]))
        record.note(f"results in {out}\nreport: {write_html_report(out)}")
    return 0
