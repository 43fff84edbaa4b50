"""``fedmekt report RUN_DIR``: re-render tables and plots of a reproduction/simulation folder from its JSONL."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="re-render results.md/csv and plots from a run folder's JSONL",
                              description=__doc__)
    p.add_argument("run_dir", type=Path, help="folder holding metrics.jsonl and final.jsonl")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedmekt.errors import UserError
    from fedmekt.report import FINAL, render_report

    for name in ("metrics.jsonl", FINAL):
        if not (args.run_dir / name).is_file():
            raise UserError(f"{args.run_dir / name} not found (is {args.run_dir} a reproduce/simulate output folder?)")
    try:
        path = render_report(args.run_dir)
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot read {args.run_dir}: {exc.__class__.__name__}: {exc}") from None
    print(path.read_text())
    return 0
