"""deploy/README.md is the operator's one guide: its federation.toml example must stay complete and valid."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from fedmekt.config import FederationConfig, Hyper

GUIDE = Path(__file__).resolve().parents[1] / "deploy" / "README.md"


def test_guide_federation_toml_has_every_key_with_its_default():
    [block] = re.findall(r"```toml\n(.*?)```", GUIDE.read_text(), re.S)
    data = tomllib.loads(block)
    for shown, keys in ((set(data), {f.name for f in dataclasses.fields(FederationConfig)}),
                        (set(data["hyper"]), {f.name for f in dataclasses.fields(Hyper)})):
        assert shown == keys, f"deploy/README.md's federation.toml: add {keys - shown}, drop {shown - keys}"
    assert FederationConfig.from_dict(data).to_dict() == FederationConfig().to_dict()


def test_guide_commands_exist():
    """Every ``fedmekt <command>`` line of the guide's shell blocks is a registered subcommand."""
    from fedmekt_cli.main import COMMANDS

    shell = "".join(re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S))
    used = set(re.findall(r"^\s*fedmekt (\w+)", shell, re.M)) | set(re.findall(r"&& fedmekt (\w+)", shell))
    assert {"provision", "aggregator", "client", "status", "export"} <= used
    assert used <= {name for name, _ in COMMANDS}, used


def _guide_commands(section: str) -> list[str]:
    """The ``fedmekt provision`` commands of a section's shell blocks, in order (continuations joined, comments
    and what follows ``&&`` dropped)."""
    text = GUIDE.read_text()
    start = text.index(f"\n## {section}")
    body = text[start:text.index("\n## ", start + 1)]
    lines = "".join(re.findall(r"```bash\n(.*?)```", body, re.S)).replace("\\\n", " ").splitlines()
    return [line.split("#")[0].split("&&")[0].strip() for line in lines if line.startswith("fedmekt provision")]


def test_guide_provisioning_runs_as_written(tmp_path):
    """Sections 1 and 2 run in order on a fresh machine, through the real CLI (paths moved under tmp): a step
    must not need what only a later one makes (the first devices were given an aggregator state folder that
    exists only once the aggregator has run)."""
    import subprocess

    from federation_harness import _cmd

    commands = [c for c in _guide_commands("1. Provision") + _guide_commands("2. Logins")
                if c.split()[2] != "clear"]  # clear talks to the running broker: test_security_retained_park runs it
    assert [c.split()[2] for c in commands][:2] == ["init", "add"] and len(commands) >= 6, commands
    for command in commands:
        argv = (command.replace("/root/fedmekt-operator", str(tmp_path / "op")).replace("$OP", str(tmp_path / "op"))
                .replace("/etc/mosquitto/fedmekt", str(tmp_path / "broker")).split()[1:])
        done = subprocess.run(_cmd() + argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
