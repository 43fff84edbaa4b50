"""``fedmekt reproduce`` and ``fedmekt report`` end to end on the bundled demo data with a tiny config."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.numpy import load_file

from fedmekt.artifacts import read_run_info
from fedmekt_cli.main import main
from fedmekt.experiment.reference_rows import REFERENCES

TINY = """
hidden = 8
proxy_windows = 6
[hyper]
classifier_epochs = 1
local_epochs = 1
probe_max_iter = 20
deploy_rounds = 2
"""


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    cfg = out / "tiny.toml"
    cfg.write_text(TINY)
    rc = main(["reproduce", "--dataset", "demo", "--seeds", "1", "--rounds", "2", "--algorithms",
               "fedmekt-c,mmfedavg", "--config", str(cfg), "--wire-dtype", "float16", "--out", str(out / "run"),
               "--no-progress"])
    assert rc == 0
    return out / "run"


def test_reproduce_writes_tables_plots_metrics_and_artifacts(reproduced):
    rows = [json.loads(line) for line in (reproduced / "metrics.jsonl").read_text().splitlines()]
    assert [(r["algorithm"], r["round"]) for r in rows] == [("fedmekt-c", 0), ("fedmekt-c", 1),
                                                           ("mmfedavg", 0), ("mmfedavg", 1)]
    for r in rows:
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and 0 <= r["f1_paper_acce"] <= 1
    table = list(csv.DictReader((reproduced / "results.csv").open()))
    algorithms = ("fedmekt-c[W6,float16]", "mmfedavg[float16]")
    assert {(t["algorithm"], t["test"]) for t in table} == {(a, m) for a in (*algorithms, *REFERENCES)
                                                           for m in ("acce", "gyro")}
    assert [t["algorithm"] for t in table][:4] == sorted(algorithms * 2)   # algorithms first, then references
    assert all(t["wire_dtype"] == ("float16" if t["algorithm"] in algorithms else "") for t in table)
    md = (reproduced / "results.md").read_text()
    assert "fedmekt-c" in md and "floor" in md and "proxy windows" in md
    finals = [json.loads(line) for line in (reproduced / "final.jsonl").read_text().splitlines()]
    assert sorted(f["variant"] for f in finals if f.get("reference")) == sorted(REFERENCES)
    for png in ("f1_per_round.png", "bytes_per_round.png"):
        assert (reproduced / png).read_bytes()[:4] == b"\x89PNG"
    run = reproduced / "runs" / "fedmekt-c_W6_float16-seed0"
    weights = load_file(run / "final_model.safetensors")
    assert any(k.startswith("autoencoder.encoders.acce.") for k in weights) and "head.linear.weight" in weights
    info = read_run_info(run)
    assert info.pair == ("acce", "gyro") and info.rounds_completed == 2 and info.hidden == 8


@pytest.mark.parametrize("against", ["mmfedavg[float16]", "proxy-only", "labelled-only"])
def test_paired_differences_against_each_baseline_in_table_and_csv(reproduced, against):
    """One seed pairs each row with each baseline once: a difference, and no interval, said in words."""
    table = {(t["algorithm"], t["test"]): t for t in csv.DictReader((reproduced / "results.csv").open())}
    finals = {f["variant"]: f for f in map(json.loads, (reproduced / "final.jsonl").read_text().splitlines())}
    column = "probe_diff_{}_vs_" + against.split("[")[0]
    for variant in ("fedmekt-c[W6,float16]", "raw-features", "pooled", "mmfedavg[float16]", "proxy-only"):
        if variant == against:
            assert table[(variant, "acce")][column.format("mean")] == ""
            continue
        row = table[(variant, "acce")]
        assert row[column.format("low")] == ""
        expected = finals[variant]["probe_f1_weighted_acce"] - finals[against]["probe_f1_weighted_acce"]
        assert float(row[column.format("mean")]) == pytest.approx(expected)
    md = (reproduced / "results.md").read_text()
    assert f"## Paired differences against {against}" in md and "(n=1, no interval)" in md


def finals_by_variant(folder):
    """A folder's final records by variant, without their wall times (the only field a rerun changes)."""
    return {f["variant"]: {k: v for k, v in f.items() if k != "wall_s"}
            for f in map(json.loads, (folder / "final.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("algorithms, references", [("mmfedavg", "raw-features,labelled-only"),
                                                    ("none", "proxy-only,pooled")])
def test_runs_in_worker_processes_give_the_same_records(reproduced, tmp_path, algorithms, references):
    """``--jobs 2``: runs and reference rows (one job per row, so a seed's rows spread over the workers; with
    ``--algorithms none`` the rows alone) in spawned processes end with the records the one-process reproduction
    wrote for them (each is seeded from its config alone)."""
    out = tmp_path / "jobs"
    assert main(["reproduce", "--dataset", "demo", "--seeds", "1", "--rounds", "2", "--algorithms", algorithms,
                 "--references", references, "--config", str(reproduced.parent / "tiny.toml"),
                 "--wire-dtype", "float16", "--out", str(out), "--no-progress", "--jobs", "2"]) == 0

    ours, theirs = finals_by_variant(out), finals_by_variant(reproduced)
    runs = [] if algorithms == "none" else [f"{algorithms}[float16]"]
    assert sorted(ours) == sorted(runs + references.split(","))
    assert ours == {variant: theirs[variant] for variant in ours}
    assert bool((out / "metrics.jsonl").read_text()) == bool(runs)   # reference rows have no rounds


def test_report_rerenders_from_jsonl(reproduced, capsys):
    before = (reproduced / "results.md").read_text()
    (reproduced / "results.md").unlink()
    (reproduced / "f1_per_round.png").unlink()
    assert main(["report", str(reproduced)]) == 0
    assert (reproduced / "results.md").read_text() == before
    assert (reproduced / "f1_per_round.png").exists()
    assert "paper metric" in capsys.readouterr().out


def test_every_record_names_its_numeric_environment_and_the_table_says_when_they_differ(reproduced, tmp_path,
                                                                                       capsys):
    """Trained rows differ by float rounding across kernel paths and thread counts (fedmekt/learn/numerics.py):
    every final record names its environment, and a folder mixing two says so above its tables."""
    finals = [json.loads(line) for line in (reproduced / "final.jsonl").read_text().splitlines()]
    environments = {f["numerics"] for f in finals}
    assert len(environments) == 1 and next(iter(environments)).startswith("torch ")
    assert f"Numeric environment: {next(iter(environments))}." in (reproduced / "results.md").read_text()
    finals[0]["numerics"] = "torch 0.0, cpu AVX2, 4 threads"
    (tmp_path / "final.jsonl").write_text("".join(json.dumps(f) + "\n" for f in finals))
    (tmp_path / "metrics.jsonl").write_bytes((reproduced / "metrics.jsonl").read_bytes())
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "**Runs of 2 numeric environments:** torch 0.0, cpu AVX2, 4 threads (1 run)" in md
    assert f"{next(iter(environments))} ({len(finals) - 1} runs)" in md


@pytest.mark.parametrize("argv", [
    ["reproduce", "--algorithms", "fedsgd", "--rounds", "1"],
    ["reproduce", "--clients", "10,10", "--rounds", "1"],
    ["reproduce", "--pair", "acce", "--rounds", "1"],
    ["reproduce", "--embedding-noise", "-1", "--rounds", "1"],
    ["reproduce", "--rep-size", "-2", "--rounds", "1"],
])
def test_reproduce_bad_input_is_one_line_exit_2(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_report_on_a_folder_without_results_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_rep_size_flag_sets_r_for_every_algorithm_and_names_the_variant():
    from fedmekt.experiment.in_process import variant_label
    from fedmekt_cli.main import build_parser
    from fedmekt_cli.reproduce import build_configs

    args = build_parser().parse_args(["reproduce", "--dataset", "demo", "--algorithms", "fedmekt-c,mmfedavg",
                                      "--seeds", "1", "--rep-size", "16"])
    configs = build_configs(args)
    assert [c.resolved_rep_size() for c in configs] == [16, 16]
    assert [variant_label(c) for c in configs] == ["fedmekt-c[r16]", "mmfedavg[r16]"]
    (paper,) = build_configs(build_parser().parse_args(["reproduce", "--dataset", "demo", "--algorithms",
                                                       "fedmekt-c", "--seeds", "1"]))
    assert variant_label(paper) == "fedmekt-c" and paper.resolved_rep_size() == 4
