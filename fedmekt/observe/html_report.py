"""``report.html``: a run folder's results as one self-contained page to look at (plots embedded as PNG).

It reads only the folder's files — ``metrics.jsonl``, ``final.jsonl`` (absent for a partial run),
``results.csv`` and ``runs/<run>/run.json`` — so ``fedmekt report`` renders finished and partial runs alike
and picks up whatever columns ``fedmekt.observe.report`` writes into the results table.
Rounds are numbered from 1, as the progress bar counts them; bytes are in KiB / MiB (binary units).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmekt.artifacts import METRICS, RUN_INFO, atomic_write_bytes
from fedmekt.observe.round_row import parse_rows

REPORT = "report.html"
FINAL = "final.jsonl"   # = fedmekt.observe.report.FINAL, without importing the table code
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class RunFolder:
    """What the report reads from a folder."""

    path: Path
    rows: list[dict]                        # one per round per run
    finals: list[dict]                      # one per finished run
    table: list[dict]                       # results.csv rows (strings)
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dataset -> class names

    @property
    def variants(self) -> list[str]:
        return sorted({_variant(r) for r in self.rows})

    @property
    def setups(self) -> list[str]:
        return sorted({_setup(r) for r in self.rows})


def _variant(rec: dict) -> str:
    return rec.get("variant", rec["algorithm"])


def _setup(rec: dict) -> str:
    return f"{rec['dataset']} {rec['pair']}"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def load_run_folder(run_dir: Path) -> RunFolder:
    """Read a folder; ValueError when it holds no round at all."""
    run_dir = Path(run_dir)
    rows = _jsonl(run_dir / METRICS)
    if not rows:
        raise ValueError(f"{run_dir / METRICS} holds no rounds")
    table = []
    if (run_dir / "results.csv").is_file():
        table = list(csv.DictReader(io.StringIO((run_dir / "results.csv").read_text())))
    labels = {}
    for info in sorted(run_dir.glob(f"runs/*/{RUN_INFO}")):
        data = json.loads(info.read_text())
        labels[data.get("dataset", "")] = tuple(data.get("label_names", ()))
    return RunFolder(run_dir, rows, _jsonl(run_dir / FINAL), table, labels)


# -- figures ---------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    return buf.getvalue()


def _integer_rounds(ax, last: int, first: int = 1) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))
    ax.set_xlim(first - 0.5, last + 0.5)


def _by_round(rows: list[dict], key) -> dict[int, list[float]]:
    """Round (1-based) -> values of ``key(row)`` (a :class:`RoundRow`) over the runs (seeds) that have it."""
    out: dict[int, list[float]] = defaultdict(list)
    for r in parse_rows(rows):
        v = key(r)
        if v is not None:
            out[r.number].append(float(v))
    return dict(sorted(out.items()))


def f1_figure(folder: RunFolder) -> bytes:
    """Paper-metric F1 per round: mean over seeds, min–max band, the majority floor on the same metric as a dashed
    line, and the deployed model's figure (the package's model on the whole test set) as a star at the last round."""
    plt = _pyplot()
    mods = sorted({m for r in parse_rows(folder.rows) for m in r.f1_paper})
    setups = folder.setups
    fig, axes = plt.subplots(len(setups), max(1, len(mods)), figsize=(6 * max(1, len(mods)), 4 * len(setups)),
                             squeeze=False)
    last = max(r.number for r in parse_rows(folder.rows))
    for i, setup in enumerate(setups):
        finals = [f for f in folder.finals if _setup(f) == setup and "majority_f1_paper" in f]
        floor = float(np.mean([f["majority_f1_paper"] for f in finals])) if finals else None   # the curve's metric
        for j, m in enumerate(mods):
            ax = axes[i][j]
            for c, variant in enumerate(folder.variants):
                rows = [r for r in folder.rows if _setup(r) == setup and _variant(r) == variant]
                series = _by_round(rows, lambda r: r.f1_paper.get(m))
                if not series:
                    continue
                x = np.array(list(series))
                vals = list(series.values())
                seeds = max(len(v) for v in vals)
                color = COLORS[c % len(COLORS)]
                ax.plot(x, [np.mean(v) for v in vals], color=color, lw=2, marker="o" if len(x) <= 30 else None,
                        ms=3, label=variant + (f" (mean of {seeds} seeds; band: min–max)" if seeds > 1 else ""))
                if seeds > 1:
                    ax.fill_between(x, [min(v) for v in vals], [max(v) for v in vals], color=color, alpha=0.18, lw=0)
                deployed = [f[f"deployed_f1_weighted_{m}"] for f in folder.finals
                            if _setup(f) == setup and _variant(f) == variant and f"deployed_f1_weighted_{m}" in f]
                if deployed:   # another metric (the whole test set), so a marker beside the curve, not on it
                    ax.plot([x[-1]], [np.mean(deployed)], "*", color=color, ms=12, mec="black", mew=0.6,
                            label=f"{variant}: deployed model {np.mean(deployed):.2f} (weighted F1, whole test set)")
            if floor is not None:
                ax.axhline(floor, color="0.35", ls="--", lw=1.5, label=f"majority-class floor {floor:.2f}")
            _integer_rounds(ax, last)
            _f1_axes(ax, f"{setup}: tested on {m} alone", "round", "weighted F1 (paper's per-round probe)", ncol=1)
    fig.tight_layout()
    return _png(fig)


def _f1_axes(ax, title: str, xlabel: str, ylabel: str, ncol: int) -> None:
    """An F1 panel's frame: F1 from 0 to 1, a light grid, its title and labels, the legend below."""
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend_below(ax, ncol=ncol)


def _legend_below(ax, ncol: int = 2) -> None:
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def bytes_figure(folder: RunFolder) -> bytes:
    """Left: KiB per round, uploads and downloads. Right: cumulative MiB with the one-off proxy set at round 0."""
    plt = _pyplot()
    setups = folder.setups
    fig, axes = plt.subplots(len(setups), 2, figsize=(13, 4 * len(setups)), squeeze=False)
    last = max(r.number for r in parse_rows(folder.rows))
    for i, setup in enumerate(setups):
        left, right = axes[i]
        for c, variant in enumerate(folder.variants):
            rows = [r for r in folder.rows if _setup(r) == setup and _variant(r) == variant]
            if not rows:
                continue
            color = COLORS[c % len(COLORS)]
            up = _by_round(rows, lambda r: r.bytes_up)
            down = _by_round(rows, lambda r: r.bytes_down)
            left.plot(list(up), [np.mean(v) / 1024 for v in up.values()], color=color, lw=4, alpha=0.45,
                      label=f"{variant} up (clients → server)")
            left.plot(list(down), [np.mean(v) / 1024 for v in down.values()], color=color, lw=1.5, ls="--",
                      label=f"{variant} down (server → clients)")
            finals = [f for f in folder.finals if _setup(f) == setup and _variant(f) == variant]
            proxy = float(np.mean([f.get("bytes_proxy_once", 0) for f in finals])) if finals else 0.0
            per_round = [np.mean(up[t]) + np.mean(down.get(t, [0.0])) for t in up]
            cumulative = np.concatenate([[proxy], proxy + np.cumsum(per_round)]) / 2**20
            right.plot([0, *up], cumulative, color=color, lw=2, label=variant)
            if proxy:
                right.plot([0], [proxy / 2**20], "s", color=color, ms=8)
                right.annotate(f"proxy set sent once: {proxy / 2**20:.2f} MiB", (0, proxy / 2**20),
                               xytext=(8, 6), textcoords="offset points", fontsize=9, color=color)
        left.set_title(f"{setup}: bytes per round (all selected clients)", fontsize=12)
        left.set_ylabel("KiB per round")
        left.set_ylim(bottom=0)
        _integer_rounds(left, last)
        right.set_title(f"{setup}: cumulative traffic, one-off proxy set at round 0", fontsize=12)
        right.set_ylabel("MiB since the start")
        right.set_ylim(bottom=0)
        _integer_rounds(right, last, first=0)
        for ax in (left, right):
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
            _legend_below(ax)
    fig.tight_layout()
    return _png(fig)


def f1_bytes_figure(folder: RunFolder) -> bytes | None:
    """Final F1 against the bytes of the whole run, one panel per setup and test modality (results.csv rows).

    Every algorithm and profile is a point: filled = the converged probe, hollow = the deployed model.
    Reference rows send nothing, so they are horizontal lines (dotted: probe). None without a results table.
    """
    rows = [r for r in folder.table if r.get("test")]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    panels = sorted({(f"{r['dataset']} {r['pair']}", r["test"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for ax, (setup, m) in zip(axes[0], panels):
        mine = [r for r in rows if (f"{r['dataset']} {r['pair']}", r["test"]) == (setup, m)]
        for c, r in enumerate(mine):
            color, probe = COLORS[c % len(COLORS)], _number(r.get("probe_f1_weighted_mean"))
            mib, deployed = _number(r.get("bytes_total_run")) / 2**20, _number(r.get("deployed_f1_weighted_mean"))
            if np.isnan(mib):
                if not np.isnan(probe):
                    ax.axhline(probe, color=color, ls=":", lw=1.3, label=f"{r['algorithm']} (sends nothing)")
                continue
            ax.plot([mib], [probe], "o", color=color, ms=8, label=r["algorithm"])
            if not np.isnan(deployed):
                ax.plot([mib], [deployed], "o", color=color, ms=8, mfc="none")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        _f1_axes(ax, f"{setup}: tested on {m}", "MiB over the whole run (log scale)",
                 "weighted F1 (filled: probe, hollow: deployed)", ncol=2)
    fig.tight_layout()
    return _png(fig)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def participation_figure(folder: RunFolder) -> bytes | None:
    """Which client's upload was absorbed in which round (share of the runs, for several seeds/algorithms)."""
    rows = [r for r in folder.rows if "participants" in r]
    if not rows:
        return None
    plt = _pyplot()
    clients = sorted({c for r in rows for c in r["participants"]})
    last = max(int(r["round"]) + 1 for r in rows)
    runs = {r["run"] for r in rows}
    grid = np.zeros((len(clients), last))
    for r in rows:
        for c in r["participants"]:
            grid[clients.index(c), int(r["round"])] += 1.0 / len(runs)
    fig, ax = plt.subplots(figsize=(max(8.0, min(14.0, 3 + 0.35 * last)), 1.8 + 0.3 * len(clients)))
    im = ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest",
                   extent=(0.5, last + 0.5, len(clients) - 0.5, -0.5))
    ax.set_yticks(range(len(clients)), clients, fontsize=9)
    _integer_rounds(ax, last)
    ax.set_xlabel("round")
    ax.set_title(f"uploads absorbed per client and round, {len(runs)} run(s)", fontsize=11)
    if len(runs) > 1:
        fig.colorbar(im, ax=ax, label="share of runs")
    ax.annotate("rounds", (1.0, -0.5), xycoords=("axes fraction", "data"), xytext=(4, 4),
                textcoords="offset points", va="bottom", fontsize=8)
    for k, t in enumerate(grid.sum(1)):
        ax.annotate(f"{t:.3g}", (1.0, k), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def confusion_figure(folder: RunFolder) -> bytes | None:
    """Final probe's confusion matrix per algorithm and test modality, summed over seeds, rows normalised."""
    cells = defaultdict(list)
    for f in folder.finals:
        for k, v in f.items():
            if k.startswith("confusion_"):
                cells[(_variant(f), k[len("confusion_"):])].append((f["dataset"], np.asarray(v, dtype=np.int64)))
    if not cells:
        return None
    plt = _pyplot()
    federated = [v for v in folder.variants if any((v, m) in cells for _, m in cells)]
    variants = federated + sorted({v for v, _ in cells} - set(federated))   # then the reference rows
    mods = sorted({m for _, m in cells})
    n = max(cm.shape[0] for runs in cells.values() for _, cm in runs)
    size = max(3.5, 0.45 * n + 1.5)
    fig, axes = plt.subplots(len(variants), len(mods), figsize=(size * len(mods), size * len(variants)),
                             squeeze=False)
    for i, variant in enumerate(variants):
        for j, m in enumerate(mods):
            ax = axes[i][j]
            runs = cells.get((variant, m))
            if not runs:
                ax.axis("off")
                continue
            cm = sum(c for _, c in runs)
            names = folder.labels.get(runs[0][0]) or tuple(str(k) for k in range(cm.shape[0]))
            recall = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
            for (a, b), v in np.ndenumerate(recall):
                if v >= 0.005:
                    ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7 if n > 8 else 9,
                            color="white" if v > 0.6 else "black")
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{variant}, tested on {m}\n(share of each true class, {len(runs)} seed(s))", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# -- page ------------------------------------------------------------------------------------------

# (results.csv column, heading): what a reader compares; results.csv keeps every column
COLUMNS = (("dataset", "dataset"), ("algorithm", "row"), ("test", "test"), ("seeds", "seeds"),
           ("deployed_f1_weighted", "deployed F1"), ("probe_f1_weighted", "probe F1"),
           ("probe_f1_macro", "probe macro F1"), ("paper_metric", "paper metric"), ("majority_f1_weighted", "floor"),
           ("probe_diff_mean_vs_mmfedavg", "probe − mmFedAvg"), ("probe_diff_mean_vs_proxy-only", "probe − proxy-only"),
           ("bytes_total_run", "MiB over the run"))


def _cell(row: dict, column: str) -> str:
    """A readable cell: mean ± std where the table has both, MiB for bytes, – for nothing."""
    value = row.get(column, row.get(f"{column}_mean", ""))
    x = _number(value)
    if np.isnan(x):
        return "–" if value in ("", "nan", None) else html.escape(value)
    if "bytes" in column:
        return f"{x / 2**20:,.2f}"
    if column == "seeds":
        return f"{int(x)}"
    if "diff" in column:
        return f"{x:+.3f}"
    std = _number(row.get(f"{column}_std"))
    return f"{x:.3f}" + ("" if np.isnan(std) else f" ± {std:.3f}")


def table_html(table: list[dict]) -> str:
    if not table:
        return "<p>No results table (the run has not finished: no final probe yet).</p>"
    cols = [(c, h) for c, h in COLUMNS if any(c in r or f"{c}_mean" in r for r in table)]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r, c)}</td>" for c, _ in cols) + "</tr>" for r in table)
    return (f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
            '<p class="note">Mean ± std over seeds; every column, intervals included, is in results.csv '
            "and results.md.</p>")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def overview(folder: RunFolder) -> str:
    """One line per run: rounds done, the deployed model's and the final probe's F1 per test modality, floor."""
    done = {f["run"]: f for f in folder.finals}
    rounds: dict[str, int] = defaultdict(int)
    for r in folder.rows:
        rounds[r["run"]] = max(rounds[r["run"]], int(r["round"]) + 1)
    items = []
    for run in sorted(rounds):
        f = done.get(run)
        if f is None:
            items.append(f"<li><b>{html.escape(run)}</b>: {rounds[run]} round(s) done, not finished</li>")
            continue
        probes, deployed = (", ".join(f"{k[len(prefix):]} {v:.3f}" for k, v in sorted(f.items())
                                      if k.startswith(prefix)) for prefix in ("probe_f1_weighted_",
                                                                              "deployed_f1_weighted_"))
        floor = f.get("majority_f1_weighted", float("nan"))
        items.append(f"<li><b>{html.escape(run)}</b>: {rounds[run]} of {f.get('rounds', rounds[run])} rounds; "
                     + (f"deployed model weighted F1 {deployed}; " if deployed else "")
                     + f"final probe weighted F1 {probes}; majority floor {floor:.3f}</li>")
    return "<ul>" + "".join(items) + "</ul>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; } .scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 3px 6px; }
th { background: #f3f3f3; } td { text-align: right; } p.note { color: #555; font-size: 0.9em; }
"""


PLOT_FILES = {"F1 per round": "f1_per_round.png", "Bytes per round": "bytes_per_round.png"}  # also beside the page


def sections(folder: RunFolder) -> list[tuple[str, bytes | None, str]]:
    """The page's figures, each drawn once: (title, PNG or None when the folder lacks its data, note)."""
    return [
        ("F1 per round", f1_figure(folder),
         "The paper's per-round probe (weighted F1 per 2000-step test chunk, averaged) for each test modality; "
         "the dashed line is the score, on that same metric, of always predicting the labelled set's majority "
         "class (chunk averages score a constant predictor higher than the whole test set does). The star at "
         "the last round is the deployed model (what the package ships), scored on another metric: weighted F1 "
         "over the whole test set, as in the table."),
        ("Bytes per round", bytes_figure(folder),
         "Encoded wire messages (frame headers + tensors) summed over a round's selected clients; "
         "FedMEKT also sends the proxy set once before the first round, or (proxy_delivery \"round\") each "
         "round's proxy windows inside the down bytes."),
        ("F1 against bytes", f1_bytes_figure(folder),
         "Final weighted F1 of every algorithm and profile against the bytes its whole run sent (log scale): "
         "filled dot = the converged probe, hollow dot = the deployed model (what the package ships); reference rows "
         "send nothing and are dotted lines at their probe."),
        ("Per-client participation", participation_figure(folder),
         "Dark cell: the client's upload was absorbed in that round (with several runs: in that share of them); "
         "the number at the right counts its rounds (mean over runs). Clients never absorbed are not listed."),
        ("Final probe: confusion matrix", confusion_figure(folder),
         "A fresh linear head on the frozen final encoder, over the whole test set."),
    ]


def render_html(folder: RunFolder, figures: list[tuple[str, bytes | None, str]]) -> str:
    """The page around ``figures`` (:func:`sections`)."""
    parts = [f"<h1>fedmekt run {html.escape(folder.path.resolve().name)}</h1>", overview(folder)]
    for title, png, note in figures:
        parts.append(f"<h2>{title}</h2>")
        parts.append(f'<p class="note">{note}</p>{_img(png, title)}' if png else
                     "<p>Not in this run folder.</p>")
    parts += ["<h2>Results</h2>", table_html(folder.table)]
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>fedmekt report {html.escape(folder.path.name)}'
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def write_html_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html``, and its per-round figures beside it as PNG files (``PLOT_FILES``), and return
    the page's path (ValueError when the folder has no rounds)."""
    folder = load_run_folder(run_dir)
    figures = sections(folder)
    for title, png, _ in figures:
        if png and title in PLOT_FILES:
            atomic_write_bytes(Path(run_dir) / PLOT_FILES[title], png)
    path = Path(run_dir) / REPORT
    atomic_write_bytes(path, render_html(folder, figures).encode())
    return path
