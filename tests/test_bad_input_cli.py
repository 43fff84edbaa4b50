"""Bad user input to the real ``fedmekt`` command: one clear error line, non-zero exit, no traceback.

Each case runs the installed console script in a subprocess, exactly as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fault_ledger import record
from fedmekt.transport.broker import free_port
from fedmekt_cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("fedmekt")
COMMANDS = set(build_parser()._subparsers._group_actions[0].choices)  # the subcommands registered


def fedmekt(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "fedmekt_cli"]
    env = {**os.environ, "FEDMEKT_DATA_DIR": str(cwd / "no-data-here")}
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_clear_error(done: subprocess.CompletedProcess, what: str, mentions: str = "") -> None:
    err = done.stderr
    assert done.returncode != 0, f"{what}: exit 0\n{err}"
    assert "Traceback" not in err, f"{what}: traceback\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("fedmekt") and ": error:" in line]
    assert len(errors) == 1, f"{what}: expected one 'fedmekt …: error: …' line, got\n{err}"
    assert errors[0] == lines[-1], f"{what}: the error line is not the last thing printed\n{err}"
    assert mentions.lower() in errors[0].lower(), f"{what}: {errors[0]!r} does not mention {mentions!r}"
    record("bad input", f"CLI: {what}")


def _bad_files(tmp: Path) -> dict[str, Path]:
    (tmp / "empty").mkdir()
    hapt = tmp / "corrupt-hapt"
    hapt.mkdir()
    (hapt / "hapt_raw.npz").write_bytes((REPO / "sensors/demo/hapt_demo.npz").read_bytes()[:1000])
    gen = tmp / "bad-generic"
    gen.mkdir()
    (gen / "dataset.toml").write_text("name = 'x'\nmodalities = [ unclosed\n")
    (tmp / "bad.toml").write_text("[federation\nrounds = = 3\n")
    (tmp / "wrong-types.toml").write_text('rounds = "many"\nper_round = -4\nno_such_option = 1\n')
    (tmp / "binary.toml").write_bytes(b"\x00\xff\xfe garbage \x89PNG")
    (tmp / "rounds-word.toml").write_text('rounds = "three"\n')
    (tmp / "key-typo.toml").write_text('round = 3\n')
    (tmp / "federation-table.toml").write_text("[federation]\nname = 'x'\n")
    (tmp / "federation-slash.toml").write_text('federation = "lab/one"\n')
    (tmp / "hyper-type.toml").write_text('[hyper]\nlr_local = "fast"\n')
    (tmp / "fed.toml").write_text('federation = "ft"\ndataset = "demo"\nclients = [1, 1, 1]\nper_round = 3\n'
                                  'rounds = 1\nproxy_windows = 8\n')
    (tmp / "state").mkdir(exist_ok=True)
    (tmp / "state" / "ft.epoch").write_text("seven\n")
    return {"empty": tmp / "empty", "hapt": hapt, "generic": gen}


CASES = [
    # (id, subcommand, args (with {tmp} / {port} / {empty} … placeholders), word the error line must contain)
    ("unknown dataset", "data", ["data", "inspect", "no_such_dataset"], "no_such_dataset"),
    ("missing dataset folder", "data", ["data", "inspect", "ur_fall", "--data-dir", "{tmp}/nowhere"], "not found"),
    ("dataset folder without the data", "data", ["data", "inspect", "hapt", "--data-dir", "{empty}"], "not found"),
    ("corrupt dataset file", "data", ["data", "inspect", "hapt", "--data-dir", "{hapt}"], "hapt"),
    ("malformed dataset descriptor", "data", ["data", "inspect", "generic", "--data-dir", "{generic}"], "dataset.toml"),
    ("output in a missing folder", "data", ["data", "split", "demo", "--out", "{tmp}/no/such/dir/split.json"],
     "no such"),
    ("default data dir missing", "data", ["data", "inspect", "hapt"], "not found"),
    ("reproduce: unknown dataset", "reproduce", ["reproduce", "--dataset", "nosuch", "--no-progress"], "nosuch"),
    ("reproduce: missing dataset", "reproduce",
     ["reproduce", "--dataset", "hapt", "--data-dir", "{tmp}/nowhere", "--no-progress"], "not found"),
    ("reproduce: corrupt dataset", "reproduce",
     ["reproduce", "--dataset", "hapt", "--data-dir", "{hapt}", "--no-progress"], "cannot be read"),
    ("reproduce: modality the dataset lacks", "reproduce",
     ["reproduce", "--dataset", "demo", "--pair", "acce-nosuch", "--no-progress"], "nosuch"),
    ("reproduce: no worker processes", "reproduce", ["reproduce", "--dataset", "demo", "--jobs", "0", "--no-progress"],
     "--jobs"),
    ("reproduce: nothing to run", "reproduce",
     ["reproduce", "--dataset", "demo", "--algorithms", "none", "--no-reference-rows", "--no-progress"], "nothing to run"),
    ("malformed config file (TOML syntax)", "reproduce",
     ["reproduce", "--config", "{tmp}/bad.toml", "--no-progress"], "toml"),
    ("config file with unknown keys / wrong types", "reproduce",
     ["reproduce", "--config", "{tmp}/wrong-types.toml", "--no-progress"], "config"),
    ("config: a word for a number", "reproduce", ["reproduce", "--config", "{tmp}/rounds-word.toml"], "rounds"),
    ("config: a key's near miss", "reproduce", ["reproduce", "--config", "{tmp}/key-typo.toml"],
     "round (did you mean 'rounds'?)"),
    ("data folder that does not exist", "data", ["data", "inspect", "--data-dir", "{tmp}/nowhere"],
     "nowhere does not exist"),
    ("config: a [federation] table", "reproduce", ["reproduce", "--config", "{tmp}/federation-table.toml"],
     "federation"),
    ("config: federation name with /", "simulate", ["simulate", "--config", "{tmp}/federation-slash.toml"],
     "federation"),
    ("config: hyper value of the wrong type", "reproduce", ["reproduce", "--config", "{tmp}/hyper-type.toml"],
     "hyper.lr_local"),
    ("simulate: federation name with a space", "simulate", ["simulate", "--federation", "lab one"], "federation"),
    ("runs: not a folder", "runs", ["runs", "{tmp}/nowhere"], "nowhere"),
    ("log: unknown run", "log", ["log", "nosuchrun", "--dir", "{tmp}"], "nosuchrun"),
    ("binary config file", "reproduce", ["reproduce", "--config", "{tmp}/binary.toml", "--no-progress"], "toml"),
    ("missing config file", "reproduce", ["reproduce", "--config", "{tmp}/nowhere.toml", "--no-progress"],
     "not found"),
    ("config path is a folder", "reproduce", ["reproduce", "--config", "{empty}", "--no-progress"], "directory"),
    ("infer: missing model package", "infer", ["infer", "--model", "{tmp}/nowhere", "--source", "replay:demo"],
     "nowhere"),
    ("infer: folder that is not a package", "infer", ["infer", "--model", "{empty}", "--source", "replay:demo"],
     "package"),
    ("report: not a run folder", "report", ["report", "{empty}"], "metrics.jsonl"),
    ("simulate: malformed config file", "simulate", ["simulate", "--config", "{tmp}/bad.toml"], "toml"),
    ("aggregator: config with unknown keys", "aggregator",
     ["aggregator", "--broker", "mqtt://127.0.0.1:{port}", "--config", "{tmp}/wrong-types.toml"], "config"),
    ("aggregator: broker URL of another scheme", "aggregator",
     ["aggregator", "--broker", "http://127.0.0.1:{port}", "--config", "{tmp}/fed.toml"], "mqtt://"),
    ("aggregator: missing CA file", "aggregator",
     ["aggregator", "--broker", "mqtts://127.0.0.1:{port}", "--ca-file", "{tmp}/none.crt", "--config", "{tmp}/fed.toml",
      "--out", "{tmp}/agg"], "not found"),
    ("aggregator: run epoch out of range", "aggregator",
     ["aggregator", "--broker", "mqtt://127.0.0.1:{port}", "--config", "{tmp}/fed.toml", "--min-epoch", "0"],
     "--min-epoch"),
    ("aggregator: round timeout longer than announcements may carry", "aggregator",
     ["aggregator", "--broker", "mqtt://127.0.0.1:{port}", "--config", "{tmp}/fed.toml", "--round-timeout", "1e9"],
     "--round-timeout"),
    ("aggregator: negative liveness answer rate", "aggregator",
     ["aggregator", "--broker", "mqtt://127.0.0.1:{port}", "--config", "{tmp}/fed.toml", "--answer-rate", "-1"],
     "--answer-rate"),
    ("aggregator: damaged run counter", "aggregator",
     ["aggregator", "--broker", "mqtt://127.0.0.1:{port}", "--config", "{tmp}/fed.toml", "--out", "{tmp}/agg",
      "--state-dir", "{tmp}/state", "--no-progress"], "run counter"),
    ("provision: two sources of a device's run floor", "provision",
     ["provision", "add", "{tmp}/op", "c000", "--federation", "ft", "--min-epoch", "2", "--aggregator-state", "{tmp}"],
     "not both"),
    ("client: run floor out of range", "client",
     ["client", "--broker", "mqtt://127.0.0.1:{port}", "--client-id", "c000", "--federation", "ft", "--min-epoch", "-1",
      "--source", "split:{tmp}/fed.toml", "--store", "{tmp}/c000/store.sqlite"], "--min-epoch"),
    ("client: missing dataset for its source", "client",
     ["client", "--broker", "mqtt://127.0.0.1:{port}", "--client-id", "c000", "--source", "replay:hapt",
      "--data-dir", "{tmp}/nowhere", "--store", "{tmp}/c000/store.sqlite"], "not found"),
    ("client: BLE wearable with an unknown format", "client",
     ["client", "--broker", "mqtt://127.0.0.1:{port}", "--client-id", "c000", "--source", "ble:Polar H10 1,polar-h9",
      "--store", "{tmp}/c000/store.sqlite"], "polar-h10-acc"),
    ("client: BLE format file with a typo", "client",
     ["client", "--broker", "mqtt://127.0.0.1:{port}", "--client-id", "c000", "--source", "ble:Band,{tmp}/bad.toml",
      "--store", "{tmp}/c000/store.sqlite"], "BLE format"),
]
UNREACHABLE = [
    ("aggregator: unreachable broker", "aggregator",
     ["aggregator", "--broker", "mqtt://127.0.0.1:{port}", "--config", "{tmp}/fed.toml", "--out", "{tmp}/agg",
      "--no-progress"], "cannot reach"),
    ("client: unreachable broker", "client",
     ["client", "--broker", "mqtt://127.0.0.1:{port}", "--client-id", "c000", "--federation", "ft",
      "--source", "split:{tmp}/fed.toml", "--store", "{tmp}/c000/store.sqlite"], "cannot reach"),
    ("simulate: unreachable broker", "simulate",
     ["simulate", "--broker", "mqtt://127.0.0.1:{port}", "--rounds", "1", "--no-progress", "--out", "{tmp}/sim"],
     "cannot reach"),
]


@pytest.mark.parametrize("what,command,args,mentions",
                         CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in UNREACHABLE],
                         ids=[c[0] for c in CASES + UNREACHABLE])
def test_bad_input_ends_with_one_clear_error_line(tmp_path, what, command, args, mentions):
    assert command in COMMANDS, f"`fedmekt {command}` is not registered"
    paths = _bad_files(tmp_path)
    subst = {"tmp": str(tmp_path), "port": str(free_port()), **{k: str(v) for k, v in paths.items()}}
    done = fedmekt(*[a.format(**subst) for a in args], cwd=tmp_path)
    assert_one_clear_error(done, what, mentions)


def test_no_arguments_prints_help_and_fails(tmp_path):
    done = fedmekt(cwd=tmp_path)
    assert done.returncode != 0 and "usage: fedmekt" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_wrong_password_for_the_secured_broker(tmp_path):
    from security_support import start_secure_broker

    sb = start_secure_broker(tmp_path, ("c000",))
    try:
        _bad_files(tmp_path)
        done = fedmekt("aggregator", "--broker", f"mqtts://localhost:{sb.port}", "--ca-file", str(sb.ca),
                       "--username", "aggregator", "--password", "not-the-password", "--config", str(tmp_path / "fed.toml"),
                       "--out", str(tmp_path / "agg"), "--no-progress", cwd=tmp_path)
        assert_one_clear_error(done, "aggregator: wrong broker password", "refused")
    finally:
        sb.broker.stop()
