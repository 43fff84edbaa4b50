"""What a finished federation ends with on the terminal: its F1 figures per test modality, each named, beside
what needs no federation (the raw-feature probe, the majority floor). ``simulate`` and ``aggregator`` print it."""

from __future__ import annotations


def f1_figures(result, raw: dict | None = None) -> dict:
    """Per test modality of a ``RunResult``: the deployed model, the final probe, the paper metric (median of the
    last rounds) and the last round's, the raw-feature probe (``raw``: that reference row) and the floor."""
    from fedmekt.observe.report import LAST_ROUNDS, paper_metric
    from fedmekt.observe.round_row import parse_rows

    pair, final, rows = result.config.pair, result.final, parse_rows(result.rows)
    last = rows[-LAST_ROUNDS:]
    return {
        "run": result.name, "algorithm": result.config.algorithm, "dataset": result.config.dataset,
        "rounds": len(rows),
        "probe_f1_weighted": {m: final.get(f"probe_f1_weighted_{m}") for m in pair},
        "deployed_f1_weighted": {m: final.get(f"deployed_f1_weighted_{m}") for m in pair},
        "paper_metric": {m: paper_metric(rows, m) if rows else None for m in pair},   # as report.py computes it
        "paper_metric_rounds": len(last),
        "last_round_paper_f1": {m: rows[-1].f1_paper.get(m) if rows else None for m in pair},
        "raw_feature_probe_f1_weighted": {m: (raw or {}).get(f"probe_f1_weighted_{m}") for m in pair},
        "majority_f1_weighted": final.get("majority_f1_weighted"),
    }


def f1_table(s: dict) -> list[str]:
    """The figures of ``f1_figures`` as aligned lines, one per figure, one column per test modality."""
    from fedmekt.observe.report import paper_metric_label

    mods = list(s["probe_f1_weighted"])
    rows = [("deployed model, the encoder and head its packages ship", s["deployed_f1_weighted"]),
            ("final probe weighted F1, converged head on the final encoder", s["probe_f1_weighted"]),
            (f"{paper_metric_label([s['paper_metric_rounds']])}, per-round probe", s["paper_metric"]),
            ("raw-feature probe, the same head on unencoded samples", s["raw_feature_probe_f1_weighted"]),
            ("majority-class floor", {m: s["majority_f1_weighted"] for m in mods})]
    width = max(len(label) for label, _ in rows)
    lines = [f"  {'weighted F1 on the test subjects':<{width}}" + "".join(f"{m:>8}" for m in mods)]
    lines += [f"  {label:<{width}}" + "".join(f"{v[m]:8.3f}" if v.get(m) is not None else f"{'–':>8}" for m in mods)
              for label, v in rows]
    return lines
