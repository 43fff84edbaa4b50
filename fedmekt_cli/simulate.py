"""``fedmekt simulate``: a whole federation through a real MQTT broker on this machine.

    fedmekt simulate                                   # short demo on the bundled HAPT subset
    fedmekt simulate --dataset ur_fall --pair acce-depth --algorithm fedmekt-c --clients 10,10,10 --rounds 100

Starts what is missing — an embedded broker (mosquitto on a free port when installed, else
amqtt in-process), the aggregator and one client per partition, each with its own MQTT
connection and its own on-disk sample store filled by replaying its partition — and writes the
same report as ``fedmekt reproduce`` plus ``wire.json`` (bytes counted by a subscriber on every
topic). Same seed and config give the same metrics as ``reproduce``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fedmekt.config import ALGORITHMS
from fedmekt_cli.broker_args import add_broker_args
from fedmekt_cli.output_format import add_format_args
from fedmekt_cli.reproduce import add_embedding_options, add_wire_option

NEEDS_TRAIN = True  # torch: an inference-only install marks and refuses it (fedmekt_cli.main)
DEMO = dict(dataset="demo", clients=(3, 3, 3), per_round=6, rounds=20, proxy_windows=32)


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="run a federation through a real MQTT broker (demo without arguments)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=False)
    p.add_argument("--dataset", default=None,
                   help="dataset (default: the dataset of your own in --data-dir, else the bundled demo)")
    p.add_argument("--pair", default=None, help="two modalities A-B (default: the dataset's pair)")
    p.add_argument("--algorithm", "--algorithms", dest="algorithm", choices=ALGORITHMS, default="fedmekt-c",
                   help="the one algorithm this federation runs (default fedmekt-c)")
    p.add_argument("--clients", default=None, help="A-only,B-only,A+B client counts (default 10,10,10; demo 3,3,3)")
    p.add_argument("--per-round", type=int, default=None, help="clients per round (default 9; demo 6)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 100; demo 20)")
    p.add_argument("--federation", default=None,
                   help="federation name (default demo: what `fedmekt status` and `fedmekt client` look at)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partition", choices=("paper", "subject"), default="paper")
    add_wire_option(p)
    p.add_argument("--proxy-windows", type=int, default=None, help="FedMEKT proxy windows per round")
    add_embedding_options(p)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--config", type=Path, default=None, help="TOML base config (flags override it)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default FEDMEKT_DATA_DIR or ../shared/data)")
    p.add_argument("--embedded", choices=("auto", "mosquitto", "amqtt"), default="auto",
                   help="embedded broker when no --broker is given (default: mosquitto if installed)")
    p.add_argument("--round-timeout", type=float, default=600.0, help="deadline per round in seconds")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<timestamp>-simulate-<dataset>)")
    p.add_argument("--no-progress", action="store_true")
    add_format_args(p, "the summary as one JSON object on stdout")
    p.set_defaults(func=run)


def build_config(args):
    from fedmekt_cli.reproduce import apply_embedding_options
    from fedmekt_cli.spelling import parse_ints, parse_pair
    from fedmekt.config import FederationConfig, load_config
    from fedmekt.errors import UserError
    from fedmekt.wire.manifest import MAX_ROUND_TIMEOUT
    from sensors.datasets import dataset_info, resolve_name

    base = load_config(args.config).to_dict() if args.config else {}
    dataset = resolve_name(args.dataset, args.data_dir, DEMO["dataset"])
    demo = args.dataset is None and dataset == DEMO["dataset"]
    info = dataset_info(dataset, args.data_dir)
    pair = parse_pair(args.pair, tuple(base.get("pair") or info.default_pair), info.modalities)
    clients = parse_ints(args.clients, 3, "--clients") if args.clients else (DEMO["clients"] if demo else (10, 10, 10))
    base.update(federation=args.federation or base.get("federation") or "demo", dataset=dataset, pair=list(pair),
                algorithm=args.algorithm, clients=list(clients), seed=args.seed, partition=args.partition,
                wire_dtype=args.wire_dtype, threads=args.threads,
                per_round=args.per_round or base.get("per_round") or (DEMO["per_round"] if demo else 9),
                rounds=args.rounds or base.get("rounds") or (DEMO["rounds"] if demo else 100))
    if not 0 < args.round_timeout <= MAX_ROUND_TIMEOUT:  # announcements carry it: gateways refuse longer ones
        raise UserError(f"--round-timeout must be in (0, {MAX_ROUND_TIMEOUT:.0f}] seconds")
    if args.proxy_windows or demo:
        base["proxy_windows"] = args.proxy_windows or DEMO["proxy_windows"]
    apply_embedding_options(args, base)
    return FederationConfig.from_dict(base)


def run(args) -> int:
    cfg = build_config(args)  # every typo refused before torch is imported (seconds)
    from fedmekt_cli.run_record import checked_run_id, refuse_used_folder

    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-simulate-{cfg.dataset}"
    refuse_used_folder(out)
    name = checked_run_id(out)
    if args.broker is not None:
        from fedmekt.transport.mqtt import check_reachable

        check_reachable(args.broker)  # and a broker that refuses

    import torch

    from fedmekt.transport.broker import embedded_broker
    from fedmekt_cli.run_record import RunRecord
    from fedmekt.observe.html_report import write_html_report
    from fedmekt.experiment.reference_rows import raw_features_final
    from fedmekt_cli.simulation import run_simulation, write_outputs
    from sensors.datasets import load_dataset
    from sensors.splits import make_split, write_manifest

    torch.set_num_threads(cfg.threads)
    devices = logging.getLogger("edge_client")
    if devices.getEffectiveLevel() == logging.INFO:   # every gateway of the federation logs in this one terminal:
        devices.setLevel(logging.WARNING)             # their per-round lines are -v's; the aggregator's one stays
    recordings = load_dataset(cfg.dataset, args.data_dir)
    with RunRecord(out, "simulate", algorithm=cfg.algorithm, dataset=cfg.dataset, rounds=cfg.rounds,
                   federation=cfg.federation) as record:
        split = make_split(recordings, cfg.pair, scheme=cfg.partition, seed=cfg.seed, clients=cfg.clients)
        write_manifest(split, out / f"split-seed{cfg.seed}.json")
        broker = embedded_broker(args.embedded) if args.broker is None else None
        try:
            url = args.broker or broker.url
            record.update(broker=url)
            record.note(
                f"simulating {cfg.algorithm} on {cfg.dataset} ({'-'.join(cfg.pair)}): {sum(cfg.clients)} clients, "
                f"{cfg.per_round} per round, {cfg.rounds} rounds\n"
                f"federation {cfg.federation} on broker {url}" + (f" ({type(broker).__name__})" if broker else "")
                + f"; watch it with: fedmekt status --broker {url} --federation {cfg.federation}", echo=not args.json)
            sim = run_simulation(cfg, split, url=url, out=out, progress=not args.no_progress,
                                 rate_hz=split.manifest["rate_hz"], round_timeout=args.round_timeout,
                                 workdir=out / "devices", name=name)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what the finished rounds show
            if (out / "metrics.jsonl").is_file():
                record.note(f"stopped; partial report of the finished rounds: {write_html_report(out)}",
                            echo=not args.json)
            raise
        finally:
            if broker is not None:
                broker.stop()
        write_outputs(out, sim)
        html = write_html_report(out)
        figures = summary_record(sim, raw_features_final(cfg, split))
        if args.json:
            print(json.dumps({**figures, "federation": cfg.federation, "broker": url,
                              "out": str(out), "report": str(html)}, indent=1))
        else:
            record.note(summary(figures, sim.discarded))
            record.note(f"results in {out}\nreport: {html}")
    return 0


def summary_record(sim, raw: dict | None = None) -> dict:
    """The summary's figures: the run's F1 per test modality (``f1_figures``) and bytes per round (accounted
    and seen on the wire)."""
    from fedmekt_cli.summary import f1_figures

    r = sim.result
    n = max(1, len(r.rows))
    packets = sim.wire.get("packet_bytes", {})
    return {
        **f1_figures(r, raw), "wall_s": round(sim.wall_s, 2),
        "upload_message_bytes_per_round": sum(x["bytes_up"] for x in r.rows) / n,
        "upload_packet_bytes_per_round": packets.get("upload", 0) / n,
        "global_packet_bytes_per_round": packets.get("global", 0) / n,
        "discarded_uploads": list(sim.discarded),
    }


def summary(s: dict, discarded: list[str]) -> str:
    """The result beside what needs no federation (raw-feature probe, majority floor), which F1 is which named;
    bytes per round accounted vs seen on the wire."""
    from fedmekt_cli.summary import f1_table

    lines = [f"{s['run']}: {s['rounds']} rounds in {s['wall_s']:.1f} s", *f1_table(s)]
    up_acc, up_wire = s["upload_message_bytes_per_round"], s["upload_packet_bytes_per_round"]
    lines.append(f"  per round: uploads {up_acc / 1024:.1f} KiB of messages, {up_wire / 1024:.1f} KiB as MQTT packets "
                 f"(+{100 * (up_wire / up_acc - 1) if up_acc else 0:.2f} % framing); "
                 f"global knowledge {s['global_packet_bytes_per_round'] / 1024:.1f} KiB published")
    if discarded:
        lines.append(f"  {len(discarded)} upload(s) discarded, e.g. {discarded[0]}")
    return "\n".join(lines)
