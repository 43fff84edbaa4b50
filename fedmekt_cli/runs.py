"""``fedmekt runs [DIR]``: the run folders under DIR (default ``runs/``), newest first.

    fedmekt runs                 # RUN, FEDERATION RUN, STATUS, ROUNDS, ALGORITHM, DATASET, FINAL F1, LAST ROUND F1
    fedmekt runs --json          # the same as a JSON list, for scripts

A run's id is its folder name: ``fedmekt log ID``, ``fedmekt stop ID``, ``fedmekt export --run ID``,
``fedmekt report runs/ID``, and the run the dashboard, ``status`` and the gateways' logs name. An aggregator's
(or simulate's) run also has a federation run id (``e<epoch>-<hex>``; FEDERATION RUN, ``federation_run`` in the
JSON), which the gateways log beside the name: those commands take it too. STATUS is
``running`` while its process lives, ``finished`` once the final probe is written, and ``interrupted``
or ``failed`` (with the rounds it completed, and for a failed run the reason, on the line below)
otherwise. FINAL F1 is the final probe's weighted F1 per test modality (– until the run finishes),
LAST ROUND F1 the paper's per-round metric of the last round done: two metrics, two columns.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedmekt_cli.output_format import add_format_args

FILES = ("metrics.jsonl", "final.jsonl", "run-state.json")


def register(subparsers) -> None:
    p = subparsers.add_parser("runs", help="list run folders: status, rounds done, algorithm, dataset, F1",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", type=Path, default=None, help="folder of run folders (default runs/)")
    p.add_argument("--dir", dest="dir_flag", type=Path, default=None, metavar="DIR",
                   help="the same, spelled as in fedmekt log")
    add_format_args(p, "a JSON list")
    p.set_defaults(func=run)


@dataclass
class RunSummary:
    """One line of ``fedmekt runs``."""

    id: str
    path: str
    status: str
    rounds_done: int
    rounds: int | None
    algorithms: list[str]
    dataset: str
    f1: dict[str, float] = field(default_factory=dict)              # final probe, weighted F1
    f1_last_round: dict[str, float] = field(default_factory=dict)   # paper metric of the last round done
    started: float | None = None
    error: str | None = None                                        # why a failed run failed
    federation_run: str | None = None   # the federation's run id on the wire (aggregator and simulate runs)


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def summarize_run(path: Path) -> RunSummary:
    """Read what a run folder says about itself (tolerates missing and half-written files)."""
    from fedmekt.observe.round_row import parse_rows
    from fedmekt_cli.run_record import RunState, federation_run

    records, state = _jsonl(path / "metrics.jsonl"), RunState.read(path)
    rows = parse_rows(records)
    finals = [f for f in _jsonl(path / "final.jsonl") if not f.get("reference")]   # federated runs only
    info = state.info if state else {}
    by_run: dict[str, int] = {}
    for r in rows:
        by_run[r.run] = max(by_run.get(r.run, 0), r.number)
    done = min(by_run.values()) if by_run else 0
    described = finals or records
    algorithms = sorted({r.get("variant", r.get("algorithm", "?")) for r in described}) or \
        ([info["algorithm"]] if "algorithm" in info else [])
    dataset = (described[0].get("dataset", "?") + " " + described[0].get("pair", "")).strip() if described \
        else info.get("dataset", "?")
    rounds = finals[0].get("rounds") if finals else info.get("rounds")
    if state is not None and state.alive():
        status = "running"
    elif finals and (state is None or state.state == "finished"):
        status = "finished"
    else:
        status = state.state if state is not None and state.state != "running" else "interrupted"
    last = max((r.round for r in rows), default=-1)
    return RunSummary(path.name, str(path), status, done, rounds, algorithms, dataset,
                      _means([{m: f[f"probe_f1_weighted_{m}"] for m in f.get("pair", "").split("-")
                               if isinstance(f.get(f"probe_f1_weighted_{m}"), (int, float))} for f in finals]),
                      _means([r.f1_paper for r in rows if r.round == last]),
                      state.started if state else None, state.error if state and status == "failed" else None,
                      federation_run(path))


def _means(values: list[dict[str, float]]) -> dict[str, float]:
    """Per test modality, the mean of its values over ``values`` (one {modality: F1} per run)."""
    out = {}
    for m in sorted({m for v in values for m in v}):
        vals = [v[m] for v in values if m in v]
        out[m] = sum(vals) / len(vals)
    return out


def find_runs(root: Path) -> list[Path]:
    """Run folders directly under ``root`` (or ``root`` itself when it is one), newest first."""
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    found = [p for p in candidates if any((p / f).is_file() for f in FILES)]
    return sorted(found, key=lambda p: max((p / f).stat().st_mtime for f in FILES if (p / f).is_file()),
                  reverse=True)


def run(args) -> int:
    from fedmekt.errors import UserError
    from fedmekt.printable import printable

    if args.dir is not None and args.dir_flag is not None and args.dir != args.dir_flag:
        raise UserError(f"two folders given: {args.dir} and --dir {args.dir_flag}")
    root = args.dir or args.dir_flag or Path("runs")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder (run folders are written under runs/ by default)")
    runs = [summarize_run(p) for p in find_runs(root)]
    if args.json:
        print(json.dumps([asdict(r) for r in runs], indent=1))
        return 0
    if not runs:
        print(f"no run folders in {root}")
        return 0
    lines = [("RUN", "FEDERATION RUN", "STATUS", "ROUNDS", "ALGORITHM", "DATASET", "FINAL F1 (probe)",
              "LAST ROUND F1 (paper metric)")]
    for r in runs:
        lines.append((r.id, r.federation_run or "–", r.status, f"{r.rounds_done}/{r.rounds if r.rounds else '?'}",
                      ",".join(r.algorithms) or "?", r.dataset, _f1(r.f1), _f1(r.f1_last_round)))
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]) - 1)]
    for row, summary in zip(lines, [None, *runs]):
        print(printable("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]))
        if summary is not None and summary.error:
            print(printable(f"  └ failed: {summary.error}"))
    return 0


def _f1(values: dict[str, float]) -> str:
    return ", ".join(f"{m} {v:.3f}" for m, v in values.items()) or "–"
