"""The shipped systemd units (deploy/systemd/) start their services exactly as written.

Each unit's ExecStart is expanded the way systemd does (``${VAR}`` one word, ``$VAR`` split on
white space, from its Environment= lines) and run; only the documented placeholders change: the
venv ``/opt/fedmekt/venv`` becomes this interpreter's, the Environment= paths point at temporary
copies of the examples/ configs aimed at a test mosquitto, WorkingDirectory a temporary folder.
The test waits for the service's presence on the broker, then stops it with SIGTERM as systemd does.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from export_support import signing_keys
from fedmekt.transport.broker import free_port
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.topics import Topics
from security_support import connect

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "deploy" / "systemd"
EXAMPLES = REPO / "examples"
VENV = "/opt/fedmekt/venv"  # the units' documented install location


def service_section(unit: Path) -> tuple[dict[str, str], dict[str, str]]:
    """([Service] settings, the environment its Environment= lines define)."""
    settings, env, section = {}, {}, None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        if section != "Service":
            continue
        if key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val
        else:
            settings[key] = value
    return settings, env


def exec_start(unit: Path, overrides: dict[str, str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """ExecStart as systemd expands it with the unit's environment plus ``overrides``; the unit's settings; the
    environment the service runs with."""
    settings, env = service_section(unit)
    assert set(overrides) <= set(env), f"{unit.name} has no Environment= for {set(overrides) - set(env)}"
    env.update(overrides)
    argv: list[str] = []
    for word in shlex.split(settings["ExecStart"]):
        whole = re.fullmatch(r"\$(\w+)", word)
        if whole:
            argv += env[whole.group(1)].split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    assert argv[0] == f"{VENV}/bin/fedmekt"
    return [str(Path(sys.executable).parent / "fedmekt"), *argv[1:]], settings, env


def example_config(name: str, tmp: Path, **changes) -> Path:
    """A copy of examples/<name> with ``changes`` (None removes a key)."""
    data = tomllib.loads((EXAMPLES / name).read_text())
    for key, value in changes.items():
        data.pop(key, None) if value is None else data.__setitem__(key, value)
    out = tmp / name
    out.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in data.items()))
    return out


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return str(value)


def run_until(argv: list[str], settings: dict[str, str], env: dict[str, str], cwd: Path, port: int, topic: str,
              payload: bytes | None, timeout: float = 120.0) -> None:
    """Start the service, wait for ``topic`` (with ``payload``) on the broker, stop it as systemd does."""
    probe = connect(port, None, None, ca=None)
    probe.subscribe(topic)
    proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        seen = probe.wait_for(topic, payload, timeout=timeout)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert seen, f"no {payload!r} on {topic}"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=float(settings["TimeoutStopSec"]))
        ok = {0, *map(int, settings.get("SuccessExitStatus", "").split())}
        assert proc.returncode in ok, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        probe.close()


@pytest.fixture
def public_key(tmp_path_factory) -> Path:
    return signing_keys(tmp_path_factory)[1]


def test_every_unit_runs_fedmekt_from_the_venv_with_its_config():
    units = sorted(p.name for p in UNITS.glob("*.service"))
    assert units == ["fedmekt-aggregator.service", "fedmekt-gateway-infer.service", "fedmekt-gateway.service"]
    for name in units:
        settings, env = service_section(UNITS / name)
        assert settings["ExecStart"].startswith(f"{VENV}/bin/fedmekt ") and settings["User"] == "fedmekt"
        assert settings["WorkingDirectory"] == "/var/lib/fedmekt" and "TimeoutStopSec" in settings


def test_gateway_unit_starts_a_training_client(mosquitto, public_key, tmp_path):
    config = example_config("gateway.toml", tmp_path, broker=mosquitto.url, credentials=None, source="replay:demo",
                            store=str(tmp_path / "gw01" / "store.sqlite"), **{"public-key": str(public_key)})
    argv, settings, env = exec_start(UNITS / "fedmekt-gateway.service", {"FEDMEKT_CONFIG": str(config)})
    run_until(argv, settings, env, tmp_path, mosquitto.port, Topics("demo").status("gw01"),
              fedwire.Status("online", ("acce", "gyro")).to_bytes())
    assert (tmp_path / "gw01" / "store.sqlite").is_file()


def test_infer_only_unit_starts_a_receive_only_gateway(mosquitto, public_key, tmp_path):
    config = example_config("gateway-infer.toml", tmp_path, broker=mosquitto.url, credentials=None,
                            source=f"udp:127.0.0.1:{free_port()}", store=str(tmp_path / "gw02" / "store.sqlite"),
                            **{"public-key": str(public_key)})
    argv, settings, env = exec_start(UNITS / "fedmekt-gateway-infer.service", {"FEDMEKT_CONFIG": str(config)})
    run_until(argv, settings, env, tmp_path, mosquitto.port, Topics("demo").status("gw02"),
              fedwire.Status("online", ()).to_bytes())
    assert (tmp_path / "gw02" / "models").is_dir()


def test_aggregator_unit_publishes_its_federation(mosquitto, tmp_path):
    argv, settings, env = exec_start(UNITS / "fedmekt-aggregator.service", {
        "FEDMEKT_FEDERATION": str(EXAMPLES / "aggregator.toml"), "FEDMEKT_OUT": str(tmp_path / "aggregator"),
        "FEDMEKT_AGGREGATOR_OPTS": f"--broker={mosquitto.url} --wait-timeout=600"})
    run_until(argv, settings, env, tmp_path, mosquitto.port, Topics("demo").proxy_manifest, None)


@pytest.mark.parametrize("line, error", [
    ('client-idd = "gw01"', "unknown key 'client-idd'"),
    ('max-samples = "many"', "config key max-samples must be an integer, got 'many'"),
    ("infer-only = 1", "config key infer-only must be true or false, got 1"),
    ('mqtt-protocol = "4"', "config key mqtt-protocol must be one of auto, 5, 3.1.1, got '4'"),
])
def test_a_bad_gateway_config_key_is_one_line_naming_it(line, error, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'broker = "mqtt://127.0.0.1:9"\n{line}\n')
    proc = subprocess.run([str(Path(sys.executable).parent / "fedmekt"), "client", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and error in proc.stderr, proc.stderr


def test_the_command_line_wins_over_the_config_file(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('broker = "mqtt://127.0.0.1:9"\nclient-id = "gw01"\n')
    proc = subprocess.run([str(Path(sys.executable).parent / "fedmekt"), "client", "--config", str(config),
                           "--max-samples", "0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "fedmekt client: error: --max-samples must be >= 1"
