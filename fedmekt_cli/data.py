"""``fedmekt data``: look at a dataset before training on it, and write a split manifest.

    fedmekt data inspect [DATASET] [--data-dir DIR] [--json]
    fedmekt data split [DATASET] --out split.json [--pair A-B] [--clients 10,10,10] [--partition paper|subject] [--seed N]

DATASET may be left out when --data-dir holds a dataset of your own (its dataset.toml names it).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from fedmekt.errors import UserError
from fedmekt_cli.output_format import add_format_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect datasets and write split manifests")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="subjects, modalities, channels, rates, label counts, durations")
    inspect.add_argument("dataset", nargs="?", default=None,
                         help="ur_fall | hapt | hapt_uci | mhealth | opportunity | demo | generic | the name in "
                              "your dataset.toml (default: the dataset in --data-dir)")
    inspect.add_argument("--data-dir", type=Path, default=None, help="dataset folder (or a root holding it)")
    add_format_args(inspect, "one JSON object")
    inspect.set_defaults(func=run)
    split = sub.add_parser("split", help="draw a seeded split and write its manifest (JSON)")
    split.add_argument("dataset", nargs="?", default=None, help="as for inspect")
    split.add_argument("--data-dir", type=Path, default=None, help="dataset folder (or a root holding it)")
    split.add_argument("--pair", default=None, help="two modalities A-B, as in reproduce (default: the dataset's pair)")
    split.add_argument("--partition", "--scheme", dest="scheme", choices=("paper", "subject"), default="paper",
                       help="paper: overlapping segments of the pool as the authors deal them (default); "
                            "subject: one client per pool subject (non-IID)")
    split.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    split.add_argument("--clients", default="10,10,10", help="A-only,B-only,A+B client counts (default 10,10,10)")
    split.add_argument("--missing-rate", type=float, default=0.0,
                       help="probability that an A+B client loses one of its modalities (default 0)")
    split.add_argument("--out", type=Path, required=True, help="manifest path")
    split.set_defaults(func=run)


def summarize(recordings) -> dict:
    """JSON-able overview of a list of recordings (what ``inspect`` prints)."""
    first = recordings[0]
    labels = Counter()
    for r in recordings:
        labels.update(r.labels.tolist())
    per_subject: dict[str, dict] = {}
    for r in recordings:
        s = per_subject.setdefault(r.subject, {"units": 0, "rows": 0, "seconds": 0.0})
        s["units"] += 1
        s["rows"] += len(r)
        s["seconds"] += float(r.timestamps[-1] - r.timestamps[0]) + 1.0 / r.rate_hz if len(r) else 0.0
    return {
        "dataset": first.dataset,
        "recordings": len(recordings),
        "subjects": per_subject,
        "rate_hz": sorted({r.rate_hz for r in recordings}),
        "modalities": {m: {"channels": int(x.shape[1]), "names": list(first.channel_names.get(m, ()))}
                       for m, x in first.modalities.items()},
        "labels": {_label_name(first.label_names, k): int(v) for k, v in sorted(labels.items())},
        "rows": sum(len(r) for r in recordings),
        "hours": round(sum(s["seconds"] for s in per_subject.values()) / 3600, 3),
    }


def _label_name(names: tuple[str, ...], k: int) -> str:
    return "unlabelled" if k < 0 else names[k] if k < len(names) else str(k)


def _print(info: dict) -> None:
    from fedmekt.config import FederationConfig

    print(f"dataset {info['dataset']}: {info['recordings']} recordings, {len(info['subjects'])} subjects, "
          f"{info['rows']:,} rows, {info['hours']:.2f} h, rate {', '.join(f'{r:g}' for r in info['rate_hz'])} Hz")
    window = FederationConfig().window
    spans = ", ".join(f"{window / r:.2f} s at {r:g} Hz" for r in info["rate_hz"])
    print(f"windows are counted in rows: the default {window}-row proxy window spans {spans} "
          "(docs/sensors.md, 'Rows and seconds')")
    print("modalities:")
    for m, v in info["modalities"].items():
        names = ", ".join(v["names"][:12]) + (" …" if len(v["names"]) > 12 else "")
        print(f"  {m:<8} {v['channels']:>4} channels  {names}")
    print("labels:")
    total = max(info["rows"], 1)
    for name, n in info["labels"].items():
        print(f"  {name:<24} {n:>10,}  {100 * n / total:5.1f} %")
    print("subjects (runs, rows, minutes):")
    for s, v in info["subjects"].items():
        print(f"  {s:<16} {v['units']:>3} {v['rows']:>10,} {v['seconds'] / 60:8.1f}")


def run(args: argparse.Namespace) -> int:
    from fedmekt_cli.spelling import parse_ints, parse_pair
    from sensors.datasets import dataset_info, load_dataset, resolve_name
    from sensors.splits import make_split, write_manifest

    name = resolve_name(args.dataset, args.data_dir)
    if args.data_command == "split":  # typos refused before the files are read
        info = dataset_info(name, args.data_dir)
        pair = parse_pair(args.pair, info.default_pair, info.modalities)
        clients = parse_ints(args.clients, 3, "--clients")
    recs = load_dataset(name, args.data_dir)
    if args.data_command == "inspect":
        info = summarize(recs)
        print(json.dumps(info, indent=1)) if args.json else _print(info)
        return 0
    try:
        split = make_split(recs, pair, scheme=args.scheme, seed=args.seed, clients=clients,
                           missing_rate=args.missing_rate)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    write_manifest(split, args.out)
    rows = split.manifest["rows"]
    print(f"wrote {args.out}: test {rows['test']:,} / proxy {rows['proxy']:,} / labelled {rows['labelled']:,} rows, "
          f"{len(split.clients)} clients")
    return 0
