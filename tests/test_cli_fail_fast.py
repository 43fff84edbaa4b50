"""Typos are refused before anything heavy is imported or connected, with the near miss named; an
inference-only install (no torch) marks the commands it cannot run and refuses them in one line.

Each case runs ``fedmekt_cli.main.main`` in a fresh interpreter and reports, after it returned, whether torch
was imported: a refusal that imported torch took seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

AUDIT = ("import io, json, sys, contextlib; from fedmekt_cli.main import main; err = io.StringIO()\n"
         "with contextlib.redirect_stderr(err):\n"
         "    try: rc = main(sys.argv[1:])\n"
         "    except SystemExit as exc: rc = exc.code\n"
         "print(json.dumps({'rc': rc, 'torch': sys.modules.get('torch') is not None, 'stderr': err.getvalue()}))")
NO_TORCH = "import sys; sys.modules['torch'] = None\n"  # any `import torch` fails, as on an inference-only install

TYPOS = [
    (["reproduce", "--dataset", "ur_fal"], "unknown dataset 'ur_fal' (did you mean 'ur_fall'?)"),
    (["simulate", "--dataset", "dem"], "did you mean 'demo'?"),
    (["data", "split", "hapy", "--out", "x.json"], "did you mean 'hapt'?"),
    (["reproduce", "--dataset", "demo", "--algorithms", "fedmekt-c,mmfedavgg"], "did you mean 'mmfedavg'?"),
    (["simulate", "--algorithm", "fedmekt-cc"], "did you mean 'fedmekt-c'?"),
    (["simulate", "--pair", "acce-gyr"], "no modality 'gyr' (did you mean 'gyro'?)"),
    (["simulate", "--broker", "mqt://localhost:1883"], "did you mean 'mqtt://localhost:1883'?"),
    (["status", "--broker", "localhost:1883"], "did you mean 'mqtt://localhost:1883'?"),
    (["aggregator", "--broker", "mqtt://127.0.0.1:99999", "--config", "missing.toml"], "bad port"),
    (["client", "--broker", "mqtt://:1883", "--client-id", "c1", "--source", "replay:demo"], "names no host"),
    (["simulte"], "did you mean 'simulate'?"),
    (["aggregator", "--broker", "mqtt://127.0.0.1:9", "--config", "nope.toml"], "nope.toml"),
    (["reproduce", "--rouns", "3"], "unrecognized arguments: --rouns 3 (did you mean '--rounds'?)"),
    (["data", "split", "demo", "--out", "x.json", "--pairs", "acce-gyro"], "(did you mean '--pair'?)"),
]


def audited(argv: list[str], cwd, prelude: str = "") -> dict:
    """rc, stderr, stdout (less the audit line) and whether torch was imported, of ``main(argv)``."""
    done = subprocess.run([sys.executable, "-c", prelude + AUDIT, *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd)
    assert done.returncode == 0, done.stderr
    *printed, audit = done.stdout.splitlines()
    return {**json.loads(audit), "stdout": "\n".join(printed)}


@pytest.mark.parametrize("argv,says", TYPOS, ids=[" ".join(a) for a, _ in TYPOS])
def test_a_typo_is_one_line_with_the_near_miss_before_torch_loads(argv, says, tmp_path):
    out = audited(argv, tmp_path)
    lines = out["stderr"].strip().splitlines()
    assert out["rc"] == 2 and len(lines) == 1, out
    assert lines[0].startswith("fedmekt") and ": error: " in lines[0] and says in lines[0], out
    assert not out["torch"], f"torch was imported before refusing {argv}"


def test_export_refuses_a_public_key_and_a_used_out_folder_before_torch_loads(tmp_path):
    from export.package import generate_keypair

    generate_keypair(tmp_path / "agg.key", tmp_path / "agg.pub")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "acce.onnx").write_bytes(b"an earlier package")
    for argv, says in ((["--out", "new", "--key", "agg.pub"], "agg.pub is a public key: signing needs the private"),
                       (["--out", "pkg", "--key", "agg.key"], "pkg exists and is not empty")):
        out = audited(["export", "--run", "runs/lab", *argv], tmp_path)
        lines = out["stderr"].strip().splitlines()
        assert out["rc"] == 2 and len(lines) == 1 and says in lines[0], out
        assert not out["torch"], f"torch was imported before refusing {argv}"
    assert (tmp_path / "pkg" / "acce.onnx").read_bytes() == b"an earlier package"


@pytest.mark.parametrize("command", ["simulate", "aggregator"])
def test_a_run_folder_name_the_manifest_cannot_carry_is_refused_before_torch_loads(command, tmp_path):
    """The folder's name is the run's id, which the signed manifest carries to the gateways: a name no gateway would
    accept (space, control character) is said at once, not as a federation nobody joins."""
    (tmp_path / "federation.toml").write_text("")
    extra = ["--broker", "mqtt://127.0.0.1:9", "--config", "federation.toml"] if command == "aggregator" else []
    out = audited([command, *extra, "--out", "runs/lab 3"], tmp_path)
    lines = out["stderr"].strip().splitlines()
    assert out["rc"] == 2 and len(lines) == 1, out
    assert "--out runs/lab 3: the folder's name is the run's id" in lines[0] and "letters, digits" in lines[0], out
    assert not out["torch"] and not (tmp_path / "runs").exists(), out


def test_inference_only_help_marks_the_commands_needing_torch(tmp_path):
    out = audited(["--help"], tmp_path, NO_TORCH)
    text = " ".join(out["stdout"].split())  # help wraps its lines
    assert out["rc"] == 0 and not out["torch"]
    assert text.count("(needs the [train] extra)") == 4, out["stdout"]  # reproduce, simulate, aggregator, report
    assert "tables/plots (needs the [train] extra) simulate" in text
    assert "training needs the [train] extra; --infer-only does not" in text
    assert "needs the [train] extra, except keygen" in text
    assert "infer on-device activity recognition from a model package (onnxruntime) report" in text


def test_help_of_a_full_install_marks_nothing(tmp_path):
    out = audited(["--help"], tmp_path)
    assert out["rc"] == 0 and "[train]" not in out["stdout"]


@pytest.mark.parametrize("argv", [["reproduce", "--dataset", "demo"], ["simulate"], ["report", "."],
                                  ["aggregator", "--broker", "mqtt://127.0.0.1:9", "--config", "x.toml"],
                                  ["export", "--run", "r", "--out", "p"],
                                  ["client", "--broker", "mqtt://127.0.0.1:9", "--client-id", "c1"]])
def test_inference_only_install_refuses_a_training_command_in_one_line(argv, tmp_path):
    out = audited(argv, tmp_path, NO_TORCH)
    assert out["rc"] == 2
    assert out["stderr"] == f"fedmekt {argv[0]}: needs the [train] extra (pip install 'fedmekt-edge[train]')\n"


def test_inference_only_install_still_makes_keys(tmp_path):
    out = audited(["export", "keygen", "--out", str(tmp_path / "k")], tmp_path, NO_TORCH)
    assert out["rc"] == 0 and (tmp_path / "k.pub").is_file(), out


def test_aggregator_never_reopens_a_finished_run(tmp_path):
    """Rerunning the aggregator on a finished run folder is refused at once, the folder left as it was."""
    from fedmekt_cli.run_record import RunRecord

    with RunRecord(tmp_path / "lab3", "aggregator", rounds=6):
        (tmp_path / "lab3" / "metrics.jsonl").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "lab3").iterdir()}
    (tmp_path / "fed.toml").write_text('federation = "lab"\ndataset = "demo"\nrounds = 6\n')
    out = audited(["aggregator", "--broker", "mqtt://127.0.0.1:9", "--config", "fed.toml", "--out", "lab3"], tmp_path)
    lines = out["stderr"].strip().splitlines()
    assert out["rc"] == 2 and len(lines) == 1, out
    assert "lab3 holds a finished run of 6 rounds, nothing to resume" in lines[0] and not out["torch"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "lab3").iterdir()} == before


def test_docs_quote_the_train_extra_message_as_printed():
    from pathlib import Path

    from fedmekt_cli.main import TRAIN_HINT

    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/raspberry-pi.md"):
        assert f"fedmekt reproduce: {TRAIN_HINT}" in " ".join((root / doc).read_text().split()), doc


@pytest.mark.parametrize("argv,key,value", [
    (["data", "split", "demo", "--out", "s.json", "--partition", "subject"], "scheme", "subject"),
    (["data", "split", "demo", "--out", "s.json", "--scheme", "subject"], "scheme", "subject"),
    (["simulate", "--algorithms", "mmfedavg"], "algorithm", "mmfedavg"),
    (["reproduce", "--algorithm", "mmfedavg"], "algorithms", "mmfedavg"),
    (["export", "--signing-key", "agg.key"], "key", "agg.key"),
    (["runs", "--dir", "elsewhere"], "dir_flag", "elsewhere"),
    (["runs", "--format", "json"], "json", True),
    (["status", "--broker", "mqtt://h:1883", "--format", "json"], "json", True),
    (["status", "--broker", "mqtt://h:1883", "--format", "text"], "json", False),
    (["data", "inspect", "demo", "--json"], "json", True),
])
def test_one_concept_one_spelling_older_ones_still_work(argv, key, value):
    from pathlib import Path

    from fedmekt_cli.main import build_parser

    got = getattr(build_parser().parse_args(argv), key)
    assert (str(got) if isinstance(got, Path) else got) == value


def test_runs_takes_its_folder_either_way(tmp_path):
    out = audited(["runs", "--dir", str(tmp_path), "--format", "json"], tmp_path)
    assert out["rc"] == 0 and out["stdout"].strip() == "[]", out
    assert "--mqtt URL" not in audited(["infer", "--help"], tmp_path)["stdout"]   # the older spelling works, unlisted


REFUSING = [  # {port}: a free port nobody listens on
    ["status", "--broker", "mqtt://127.0.0.1:{port}", "--federation", "lab"],
    ["client", "--broker", "mqtt://127.0.0.1:{port}", "--client-id", "c000", "--federation", "lab",
     "--source", "replay:demo", "--store", "gw/store.sqlite"],
    ["aggregator", "--broker", "mqtt://127.0.0.1:{port}", "--config", "fed.toml", "--out", "agg"],
    ["simulate", "--broker", "mqtt://127.0.0.1:{port}", "--rounds", "1", "--out", "sim"],
]


@pytest.mark.broker
@pytest.mark.parametrize("argv", REFUSING, ids=[a[0] for a in REFUSING])
def test_a_broker_that_refuses_is_said_at_once_before_any_long_work(argv, tmp_path):
    """The port refuses TCP: one line that says so (not 'within 15 s' after 15 s of retries), before torch, the
    dataset or a store fill (the client used to read 147,104 replay samples first); nothing left behind."""
    from fedmekt.transport.broker import free_port

    (tmp_path / "fed.toml").write_text('federation = "lab"\ndataset = "demo"\nrounds = 2\n')
    port = free_port()
    out = audited([a.format(port=port) for a in argv], tmp_path)
    lines = out["stderr"].strip().splitlines()
    assert out["rc"] == 2 and len(lines) == 1, out
    assert f"cannot reach MQTT broker at 127.0.0.1:{port}: connection refused" in lines[0], out
    assert "within" not in lines[0], out
    assert not (tmp_path / "gw").exists() and not (tmp_path / "sim").exists() and not (tmp_path / "agg").exists()
    if argv[0] != "client":  # its agent module imports torch; the store fill is what took long
        assert not out["torch"], f"torch was imported before refusing {argv[0]}"
