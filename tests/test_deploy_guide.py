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
