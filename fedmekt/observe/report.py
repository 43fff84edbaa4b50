"""Results of a reproduction folder: markdown + CSV tables and PNG plots, re-renderable from its JSONL.

Folder layout (written by ``fedmekt reproduce``; ``fedmekt simulate`` reuses it)::

    OUT/metrics.jsonl        one JSON object per round per run (run, algorithm, seed, round, f1_*, bytes_*, …)
    OUT/final.jsonl          one JSON object per run: final linear probe, majority floor, settings, wall time
    OUT/results.md|csv       mean ± std over seeds per algorithm and test modality (+ the paper's value), the
                             reference rows (``fedmekt.experiment.reference_rows``) and the paired per-seed differences
                             against mmFedAvg, proxy-only and labelled-only with 95 % t-intervals
    OUT/report.html          every plot (``fedmekt.observe.html_report``, which also writes the per-round ones as
    OUT/f1_per_round.png     the paper metric per round, one panel per test modality, and
    OUT/bytes_per_round.png  bytes up and down per round and cumulative, per algorithm)
    OUT/runs/<run>/          run.json, final_model.safetensors ("autoencoder.*", "head.*"), metrics.jsonl

``render_report(OUT)`` needs only the two JSONL files (and ``write_html_report`` only those and the tables), so
``fedmekt report OUT`` re-renders everything.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedmekt.artifacts import FINAL_MODEL, METRICS, atomic_write_bytes, tensor_bytes, write_run_info
from fedmekt.errors import UserError
from fedmekt.experiment.paper_results import paper_value
from fedmekt.experiment.statistics import paired_difference
from fedmekt.observe.round_row import RoundRow, parse_rows

FINAL = "final.jsonl"
LAST_ROUNDS = 10   # the paper's table value: median of the last 10 rounds (box:15-17)
BASELINES = ("mmfedavg", "proxy-only", "labelled-only")   # paired differences are taken against each: the
    # parameter-averaging baseline, what the server gets without clients, and what the labelled set alone gives
    # (supervised-ceiling − labelled-only is the headroom labels leave; pooled − proxy-only, in proxy-only's
    # table, the headroom the clients' data leaves)
PAIRED_ON = ("rounds", "per_round", "partition")   # besides dataset, pair and clients: runs differing here
                                                   # do not share their splits' schedule and never pair


def _jsonl(records: Sequence[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, default=_plain) + "\n" for r in records).encode()


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON-able: {type(v)}")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_run(out_dir: Path, result) -> None:
    """Artifacts of one run under ``runs/<name>/`` (what export and infer read)."""
    run_dir = Path(out_dir) / "runs" / result.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, result.run_info)
    atomic_write_bytes(run_dir / FINAL_MODEL, tensor_bytes(result.model_state))
    atomic_write_bytes(run_dir / METRICS, _jsonl(result.rows))


def write_report(out_dir: Path, results: Sequence, references: Sequence[dict] = ()) -> Path:
    """Write the JSONL of ``results`` (RunResult list) and every run's artifacts, then render tables and plots.

    ``references`` are the final records of the reference rows (``fedmekt.experiment.reference_rows``): no rounds, no model.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        save_run(out_dir, r)
    atomic_write_bytes(out_dir / METRICS, _jsonl([row for r in results for row in r.rows]))
    atomic_write_bytes(out_dir / FINAL, _jsonl([r.final for r in results] + list(references)))
    return render_report(out_dir)


def _ms(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _groups(finals: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Finals grouped per (dataset, pair, clients, variant): algorithms first, then the reference rows."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for f in finals:
        groups[(f["dataset"], f["pair"], tuple(f["clients"]), f.get("variant", f["algorithm"]))].append(f)
    return sorted(groups.items(), key=lambda kv: (kv[0][:3], bool(kv[1][0].get("reference")), kv[0][3]))


def paper_metric(run_rows: list[RoundRow], m: str) -> float:
    """The paper's table value of one run: median of the moving probe over the last rounds (NaN without rounds)."""
    return float(np.median([r.f1_paper.get(m, np.nan) for r in run_rows[-LAST_ROUNDS:]])) if run_rows \
        else float("nan")


def _rounds_by_run(rows: list[dict]) -> dict[str, list[RoundRow]]:
    """Each run's rounds in order, read as ``fedmekt runs`` and the dashboard read them."""
    by_run: dict[str, list[RoundRow]] = defaultdict(list)
    for row in parse_rows(rows):
        by_run[row.run].append(row)
    return {k: sorted(v, key=lambda r: r.round) for k, v in by_run.items()}


def summarize(rows: list[dict], finals: list[dict]) -> tuple[list[dict], list[dict]]:
    """(accuracy table rows, communication table rows), aggregated over seeds per (dataset, pair, algorithm).

    Reference rows (no rounds, nothing sent) have no paper metric and no communication row.
    """
    by_run = _rounds_by_run(rows)
    acc, comm = [], []
    for (dataset, pair, clients, variant), runs in _groups(finals):
        algo = runs[0]["algorithm"]
        run_rows = [by_run.get(f["run"], []) for f in runs]
        for m in pair.split("-"):
            pm, ps = _ms([paper_metric(rr, m) for rr in run_rows])
            rec = {"dataset": dataset, "pair": pair, "clients": "/".join(map(str, clients)), "algorithm": variant,
                   "test": m, "seeds": len(runs), "rounds": runs[0]["rounds"],
                   "paper_metric_mean": pm, "paper_metric_std": ps,
                   "paper_metric_rounds": min(min(LAST_ROUNDS, len(rr)) for rr in run_rows),  # the median's span
                   "paper_value": paper_value(dataset, clients, pair, m, algo)}
            for k in ("f1_weighted", "f1_macro", "accuracy"):
                rec[f"probe_{k}_mean"], rec[f"probe_{k}_std"] = _ms([f[f"probe_{k}_{m}"] for f in runs])
            rec["deployed_f1_weighted_mean"], rec["deployed_f1_weighted_std"] = _ms(
                [f.get(f"deployed_f1_weighted_{m}", float("nan")) for f in runs])   # rows with no head: "–"
            rec["majority_f1_weighted"], _ = _ms([f["majority_f1_weighted"] for f in runs])
            rec["majority_accuracy"], _ = _ms([f["majority_accuracy"] for f in runs])
            acc.append(rec)
        if runs[0].get("reference"):
            continue
        up = [float(np.mean([r.bytes_up or 0 for r in rr])) for rr in run_rows]
        down = [float(np.mean([r.bytes_down or 0 for r in rr])) for rr in run_rows]
        total = [sum((r.bytes_up or 0) + (r.bytes_down or 0) for r in rr) + f["bytes_proxy_once"]
                 for rr, f in zip(run_rows, runs)]
        comm.append({"dataset": dataset, "pair": pair, "clients": "/".join(map(str, clients)), "algorithm": variant,
                     "wire_dtype": runs[0]["wire_dtype"],
                     "exchanged": (f"embeddings {runs[0]['layers']} of {runs[0]['proxy_windows']}×{runs[0]['window']}"
                                   f"-step proxy windows" if algo.startswith("fedmekt") else "parameters"),
                     "bytes_up_per_round": _ms(up)[0], "bytes_down_per_round": _ms(down)[0],
                     "bytes_proxy_once": float(np.mean([f["bytes_proxy_once"] for f in runs])),
                     "bytes_total_run": _ms(total)[0],
                     "wall_s": _ms([f["wall_s"] for f in runs])[0]})
    return acc, comm


def _per_seed(variant: str, runs: list[dict], by_run: dict[str, list[RoundRow]], m: str) -> tuple[dict, dict, dict]:
    """({seed: probe weighted F1}, {seed: paper metric}, {seed: deployed weighted F1}) of ``runs`` on test
    modality ``m`` (NaN where a row has no such figure: nothing pairs).

    UserError when a seed occurs twice (a folder with a run concatenated twice): it would pair arbitrarily.
    """
    seeds = [f["seed"] for f in runs]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise UserError(f"cannot pair {variant}: seed(s) {twice} occur more than once in final.jsonl")
    return ({f["seed"]: f[f"probe_f1_weighted_{m}"] for f in runs},
            {f["seed"]: paper_metric(by_run.get(f["run"], []), m) for f in runs},
            {f["seed"]: f.get(f"deployed_f1_weighted_{m}", float("nan")) for f in runs})


def _check_pairable(variant: str, runs: list[dict], base_name: str, base_runs: list[dict]) -> None:
    """UserError when two rows would pair runs of different schedules (``PAIRED_ON``), naming the field."""
    for key in PAIRED_ON:
        mine, theirs = {json.dumps(f.get(key)) for f in runs}, {json.dumps(f.get(key)) for f in base_runs}
        if len(mine | theirs) > 1:
            raise UserError(f"cannot pair {variant} with {base_name}: {key} differs "
                            f"({', '.join(sorted(mine))} against {', '.join(sorted(theirs))})")


def _baselines(members: list[tuple[str, list[dict]]]) -> list[tuple[str, list[dict]]]:
    """Per algorithm of ``BASELINES``, its first variant among ``members`` (when the folder has one)."""
    out = []
    for b in BASELINES:
        out += [(v, runs) for v, runs in members if runs[0]["algorithm"] == b][:1]
    return out


def _pairings(members: list[tuple[str, list[dict]]]) -> list[tuple[str, list[dict], str, list[dict]]]:
    """(row, its runs, baseline, its runs): every row against each baseline of the folder, and a variant of an
    algorithm (``fedmekt-c[float32]``) also against that algorithm at its defaults (``fedmekt-c``) when present:
    what the option changes, paired on the same seeds."""
    out = [(v, runs, b, base_runs) for b, base_runs in _baselines(members) for v, runs in members if v != b]
    named = dict(members)
    done = {(v, b) for v, _, b, _ in out}
    out += [(v, runs, a, named[a]) for v, runs in members
            if (a := runs[0]["algorithm"]) != v and a in named and (v, a) not in done]
    return out


def paired_differences(rows: list[dict], finals: list[dict]) -> list[dict]:
    """Per variant, test modality and baseline (``BASELINES`` present in the folder, and a variant's own
    algorithm at its defaults, ``_pairings``): mean over seeds of (variant − baseline) with a 95 % t-interval.

    Seeds pair the runs (each seed is one split shared by every algorithm of the folder); the converged probe's
    weighted F1 is the primary figure, the paper's metric stands beside it. Runs that cannot pair (a seed twice,
    another schedule) raise UserError rather than pair silently.
    """
    by_run = _rounds_by_run(rows)
    groups = _groups(finals)
    out = []
    for setup in sorted({key[:3] for key, _ in groups}):
        members = [(key[3], runs) for key, runs in groups if key[:3] == setup]
        for variant, runs, base_name, base_runs in _pairings(members):
            _check_pairable(variant, runs, base_name, base_runs)
            for m in setup[1].split("-"):
                mine, theirs = _per_seed(variant, runs, by_run, m), _per_seed(base_name, base_runs, by_run, m)
                dp, dq, dd = (paired_difference(a, b) for a, b in zip(mine, theirs))
                out.append({"dataset": setup[0], "pair": setup[1], "clients": "/".join(map(str, setup[2])),
                            "algorithm": variant, "test": m, "against": base_name,
                            "baseline": base_runs[0]["algorithm"], "pairs": dp.n,
                            "probe_diff_mean": dp.mean, "probe_diff_low": dp.low, "probe_diff_high": dp.high,
                            "probe_diff": dp.text(), "paper_diff_mean": dq.mean, "paper_diff_low": dq.low,
                            "paper_diff_high": dq.high, "paper_diff": dq.text(), "deployed_diff_mean": dd.mean,
                            "deployed_diff_low": dd.low, "deployed_diff_high": dd.high,
                            "deployed_diff": dd.text()})
    return out


def _fmt(mean: float, std: float | None = None) -> str:
    if mean is None or np.isnan(mean):
        return "–"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _kib(v: float) -> str:
    return f"{v / 1024:.1f}"


def paper_metric_label(spans) -> str:
    """"paper metric (median of last 10 rounds)", or of the fewer rounds a short run has (``spans``: per row)."""
    n = sorted({int(x) for x in spans if x}) or [LAST_ROUNDS]
    span = str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"
    return "paper metric (last round)" if n == [1] else f"paper metric (median of last {span} rounds)"


def numeric_environments(finals: list[dict]) -> dict[str, int]:
    """Runs per numeric environment (``fedmekt.learn.numerics``; "not recorded" for records written before it)."""
    count: dict[str, int] = defaultdict(int)
    for f in finals:
        count[f.get("numerics") or "not recorded"] += 1
    return dict(sorted(count.items()))


def _environment_line(environments: dict[str, int]) -> str:
    if len(environments) <= 1:
        return f"Numeric environment: {next(iter(environments), 'none')}."
    runs = "; ".join(f"{env} ({n} run{'s' if n != 1 else ''})" for env, n in environments.items())
    return (f"**Runs of {len(environments)} numeric environments:** {runs}. Trained rows of different environments "
            "differ by float rounding alone (`fedmekt/learn/numerics.py`), so a difference across them mixes that "
            "noise in.")


def render_markdown(acc: list[dict], comm: list[dict], paired: Sequence[dict] = (),
                    environments: dict[str, int] | None = None) -> str:
    lines = [
        "# Results",
        "",
        "Mean ± std over seeds (each seed = its own split of test/proxy/labelled/client units). ",
        "**paper metric** = the authors' per-round moving probe: weighted F1 per 2000-step test chunk, averaged over "
        f"chunks, median of the last {LAST_ROUNDS} rounds (of every round when a run has fewer) — the same metric as "
        "**paper** (spec §9, one run of the authors). ",
        "**probe** = the one probe of every row: per test modality, a fresh linear head trained to convergence on "
        "that modality's frozen per-step features of the labelled set, scored over the whole test set. "
        "**deployed** = the model a gateway's package runs, scored like the probe: for a federation, its encoders "
        "and head fine-tuned on the labelled set by the deploy recipe chosen on validation (`fedmekt/learn/deploy.py`; "
        "federation pretrains, labels fine-tune); for a supervised reference row, its own encoder and head; rows "
        "with no head show –. "
        "**floor** = the labelled set's majority class predicted everywhere. "
        "Reference rows on the same splits (`fedmekt.experiment.reference_rows`): **raw-features** = the probe on the "
        "unencoded per-step features; **labelled-only** = the encoder and head trained supervised on the server's "
        "labelled set alone; **proxy-only** = the server's autoencoder trained on its proxy set alone with "
        "FedMEKT-C's server steps (the server without clients); **local-only** = every client trains its own "
        "autoencoder in the rounds it is selected, nothing exchanged, mean of their probes; **pooled** = one "
        "autoencoder takes every local step of the federation and the proxy-only steps (pooled data, nothing "
        "averaged); **supervised-ceiling** = the encoder and head trained with every client's labels (labels never "
        "leave a device in a deployment: the upper reference).",
        "",
        *([_environment_line(environments), ""] if environments else []),
        "| dataset | pair | clients A/B/AB | algorithm | test | seeds | rounds | "
        f"{paper_metric_label(r['paper_metric_rounds'] for r in acc)}, ours | paper | "
        "probe weighted F1 | probe macro F1 | probe accuracy | deployed weighted F1 | floor weighted F1 | "
        "floor accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in acc:
        lines.append(
            f"| {r['dataset']} | {r['pair']} | {r['clients']} | {r['algorithm']} | {r['test']} | {r['seeds']} | "
            f"{r['rounds']} | {_fmt(r['paper_metric_mean'], r['paper_metric_std'])} | "
            f"{_fmt(r['paper_value']) if r['paper_value'] is not None else '–'} | "
            f"{_fmt(r['probe_f1_weighted_mean'], r['probe_f1_weighted_std'])} | "
            f"{_fmt(r['probe_f1_macro_mean'], r['probe_f1_macro_std'])} | "
            f"{_fmt(r['probe_accuracy_mean'], r['probe_accuracy_std'])} | "
            f"{_fmt(r['deployed_f1_weighted_mean'], r['deployed_f1_weighted_std'])} | {_fmt(r['majority_f1_weighted'])} | "
            f"{_fmt(r['majority_accuracy'])} |")
    for against in dict.fromkeys(d["against"] for d in paired):
        lines += [
            "",
            f"## Paired differences against {against}",
            "",
            f"Mean over seeds of (row − {against}) on the same split, with its 95 % Student-t interval over seeds "
            "(`scipy.stats.t`; one seed gives no interval). An interval wholly above zero is a win; one straddling "
            "zero is no evidence either way.",
            "",
            f"| dataset | pair | algorithm | test | seeds paired | probe weighted F1 − {against} (primary) | "
            f"paper metric − {against} | deployed weighted F1 − {against} |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {d['dataset']} | {d['pair']} | {d['algorithm']} | {d['test']} | {d['pairs']} | "
                  f"{d['probe_diff']} | {d['paper_diff']} | {d['deployed_diff']} |" for d in paired
                  if d["against"] == against]
    lines += [
        "",
        "## Communication",
        "",
        "Bytes are the encoded wire messages (`fedmekt.wire.codec.encoded_size`: frame headers + safetensors) in the "
        "wire dtype, summed over the selected clients of a round; a client receives only the knowledge of the "
        "modalities it holds. FedMEKT also sends every client the proxy set once (both modalities, float32), or, "
        "under `proxy_delivery = \"round\"`, only each round's proxy windows inside the down bytes.",
        "",
        "| dataset | pair | algorithm | wire dtype | exchanged | up KiB/round | down KiB/round | "
        "per round vs mmfedavg | proxy once KiB | total MiB (run) | total vs mmfedavg | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = {(c["dataset"], c["pair"], c["clients"]): c for c in comm if c["algorithm"] == "mmfedavg"}
    for c in comm:
        base = ref.get((c["dataset"], c["pair"], c["clients"]))
        per_round = c["bytes_up_per_round"] + c["bytes_down_per_round"]
        vs_round = f"{per_round / (base['bytes_up_per_round'] + base['bytes_down_per_round']):.2f}×" if base else "–"
        vs_total = f"{c['bytes_total_run'] / base['bytes_total_run']:.2f}×" if base else "–"
        lines.append(
            f"| {c['dataset']} | {c['pair']} | {c['algorithm']} | {c['wire_dtype']} | {c['exchanged']} | "
            f"{_kib(c['bytes_up_per_round'])} | {_kib(c['bytes_down_per_round'])} | {vs_round} | "
            f"{_kib(c['bytes_proxy_once'])} | {c['bytes_total_run'] / 2**20:.2f} | {vs_total} | {c['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


_CSV_COMM = ("wire_dtype", "exchanged", "bytes_up_per_round", "bytes_down_per_round", "bytes_proxy_once",
             "bytes_total_run")
_CSV_PAIRED = ("probe_diff_mean", "probe_diff_low", "probe_diff_high", "paper_diff_mean", "paper_diff_low",
               "paper_diff_high", "deployed_diff_mean", "deployed_diff_low", "deployed_diff_high")


def _csv(acc: list[dict], comm: list[dict], paired: Sequence[dict] = ()) -> str:
    """One row per table row; reference rows leave the bytes empty, a baseline its own paired difference.

    The paired columns are ``<figure>_vs_<baseline>`` for each baseline of ``BASELINES``.
    """
    by_key = {(c["dataset"], c["pair"], c["clients"], c["algorithm"]): c for c in comm}
    diffs: dict[tuple, dict] = defaultdict(dict)
    for d in paired:
        key = (d["dataset"], d["pair"], d["clients"], d["algorithm"], d["test"])
        diffs[key].update({f"{k}_vs_{d['baseline']}": d[k] for k in _CSV_PAIRED})
    columns = [f"{k}_vs_{b}" for b in BASELINES for k in _CSV_PAIRED]
    records = []
    for r in acc:
        c = by_key.get((r["dataset"], r["pair"], r["clients"], r["algorithm"]), {})
        d = diffs.get((r["dataset"], r["pair"], r["clients"], r["algorithm"], r["test"]), {})
        records.append({**r, **{k: c.get(k) for k in _CSV_COMM}, **{k: d.get(k) for k in columns}})
    buf = io.StringIO()
    if records:
        writer = csv.DictWriter(buf, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return buf.getvalue()


def render_report(out_dir: Path) -> Path:
    """(Re-)render results.md and results.csv from OUT/metrics.jsonl and OUT/final.jsonl."""
    out_dir = Path(out_dir)
    rows, finals = read_jsonl(out_dir / METRICS), read_jsonl(out_dir / FINAL)
    acc, comm = summarize(rows, finals)
    paired = paired_differences(rows, finals)
    atomic_write_bytes(out_dir / "results.md",
                       render_markdown(acc, comm, paired, numeric_environments(finals)).encode())
    atomic_write_bytes(out_dir / "results.csv", _csv(acc, comm, paired).encode())
    return out_dir / "results.md"
