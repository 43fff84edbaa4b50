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
import time
from pathlib import Path

from fedmekt.cli.broker_args import add_broker_args
from fedmekt.cli.reproduce import add_embedding_options

ALGORITHMS = ("fedmekt-c", "fedmekt-s", "mmfedavg", "mmfedprox", "mmmoon")
DEMO = dict(dataset="demo", clients=(3, 3, 3), per_round=6, rounds=20, proxy_windows=32)


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="run a federation through a real MQTT broker (demo without arguments)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_args(p, required=False)
    p.add_argument("--dataset", default=None, help="dataset (default: the bundled demo)")
    p.add_argument("--pair", default=None, help="two modalities A-B (default: the dataset's pair)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="fedmekt-c")
    p.add_argument("--clients", default=None, help="A-only,B-only,A+B client counts (default 10,10,10; demo 3,3,3)")
    p.add_argument("--per-round", type=int, default=None, help="clients per round (default 9; demo 6)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 100; demo 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partition", choices=("paper", "subject"), default="paper")
    p.add_argument("--wire-dtype", choices=("float32", "float16"), default="float32")
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
    p.set_defaults(func=run)


def build_config(args):
    from fedmekt.cli.reproduce import _parse_ints, apply_embedding_options
    from fedmekt.config import FederationConfig, load_config
    from fedmekt.errors import UserError
    from sensors.datasets import dataset_info

    demo = args.dataset is None
    base = load_config(args.config).to_dict() if args.config else {}
    dataset = args.dataset or DEMO["dataset"]
    info = dataset_info(dataset)
    pair = tuple(args.pair.split("-")) if args.pair else tuple(base.get("pair") or info.default_pair)
    if len(pair) != 2:
        raise UserError(f"--pair must be two modalities joined by '-', got {args.pair!r}")
    clients = _parse_ints(args.clients, 3, "--clients") if args.clients else (DEMO["clients"] if demo else (10, 10, 10))
    base.update(federation=f"sim-{dataset}", dataset=dataset, pair=list(pair), algorithm=args.algorithm,
                clients=list(clients), seed=args.seed, partition=args.partition, wire_dtype=args.wire_dtype,
                threads=args.threads,
                per_round=args.per_round or base.get("per_round") or (DEMO["per_round"] if demo else 9),
                rounds=args.rounds or base.get("rounds") or (DEMO["rounds"] if demo else 100))
    if args.proxy_windows or demo:
        base["proxy_windows"] = args.proxy_windows or DEMO["proxy_windows"]
    apply_embedding_options(args, base)
    return FederationConfig.from_dict(base)


def run(args) -> int:
    import torch

    from fedmekt.broker import embedded_broker
    from fedmekt.simulation import run_simulation, write_outputs
    from sensors.datasets import dataset_info, load_dataset
    from sensors.splits import make_split, write_manifest

    cfg = build_config(args)
    torch.set_num_threads(cfg.threads)
    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-simulate-{cfg.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    split = make_split(load_dataset(cfg.dataset, args.data_dir), cfg.pair, scheme=cfg.partition, seed=cfg.seed,
                       clients=cfg.clients)
    write_manifest(split, out / f"split-seed{cfg.seed}.json")
    broker = embedded_broker(args.embedded) if args.broker is None else None
    url = args.broker or broker.url
    print(f"simulating {cfg.algorithm} on {cfg.dataset} ({'-'.join(cfg.pair)}): {sum(cfg.clients)} clients, "
          f"{cfg.per_round} per round, {cfg.rounds} rounds, broker {url}"
          + (f" ({type(broker).__name__})" if broker else ""))
    try:
        sim = run_simulation(cfg, split, url=url, out=out, progress=not args.no_progress,
                             rate_hz=dataset_info(cfg.dataset).rate_hz, round_timeout=args.round_timeout,
                             workdir=out / "devices")
    finally:
        if broker is not None:
            broker.stop()
    write_outputs(out, sim)
    print(summary(sim))
    print(f"results in {out}")
    return 0


def summary(sim) -> str:
    """A few lines: final F1 per test modality, bytes per round accounted vs seen on the wire."""
    r = sim.result
    lines = [f"{r.name}: {len(r.rows)} rounds in {sim.wall_s:.1f} s"]
    for m in r.config.pair:
        f1 = r.final.get(f"probe_f1_weighted_{m}")
        last = r.rows[-1].get(f"f1_paper_{m}") if r.rows else None
        if f1 is not None:
            lines.append(f"  test on {m:>6}: final probe F1 (weighted) {f1:.3f}, last-round paper F1 {last:.3f}, "
                         f"majority floor {r.final.get('majority_f1_weighted', float('nan')):.3f}")
    wire = json.loads(json.dumps(sim.wire))
    n = max(1, len(r.rows))
    up_acc = sum(x["bytes_up"] for x in r.rows) / n
    up_wire = wire["packet_bytes"].get("upload", 0) / n
    down_wire = wire["packet_bytes"].get("global", 0) / n
    lines.append(f"  per round: uploads {up_acc / 1e3:.1f} kB of messages, {up_wire / 1e3:.1f} kB as MQTT packets "
                 f"(+{100 * (up_wire / up_acc - 1) if up_acc else 0:.2f} % framing); "
                 f"global knowledge {down_wire / 1e3:.1f} kB published")
    if sim.discarded:
        lines.append(f"  {len(sim.discarded)} upload(s) discarded, e.g. {sim.discarded[0]}")
    return "\n".join(lines)
