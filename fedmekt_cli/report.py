"""``fedmekt report RUN``: re-render a run folder's tables, plots and ``report.html`` from its JSONL.

RUN is the folder, or a run id of ``fedmekt runs`` (looked up under runs/).

A partial run (rounds in ``metrics.jsonl`` but no ``final.jsonl`` yet) still gets its ``report.html``.
"""

from __future__ import annotations

from pathlib import Path

NEEDS_TRAIN = True  # matplotlib draws the plots


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="re-render results.md/csv, plots and report.html from a run folder",
                              description=__doc__)
    p.add_argument("run_dir", type=Path, metavar="RUN",
                   help="run folder holding metrics.jsonl (and final.jsonl once finished), or its run id")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedmekt.errors import UserError
    from fedmekt.observe.html_report import write_html_report
    from fedmekt.observe.report import FINAL, render_report
    from fedmekt_cli.run_record import resolve_run

    args.run_dir = resolve_run(str(args.run_dir), Path("runs"))
    if not (args.run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{args.run_dir / 'metrics.jsonl'} not found "
                        f"(is {args.run_dir} a reproduce/simulate output folder?)")
    try:
        if (args.run_dir / FINAL).is_file():
            print(render_report(args.run_dir).read_text())
        html = write_html_report(args.run_dir)
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot read {args.run_dir}: {exc.__class__.__name__}: {exc}") from None
    print(f"report: {html}")
    return 0
