"""The topic ACL, rendered from the registry of logins: one block per login, no ``pattern`` lines.

``pattern`` lines apply to every login, so they let the monitor and the aggregator publish
as if they were clients; per-login blocks give each role exactly its rights, and a device
only its own federations and the protocol's exact topics (``fedmekt/wire/topics.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmekt.wire.topics import ROOT

ROLES = ("device", "aggregator", "monitor", "bridge", "janitor")
ALL_FEDERATIONS = "+"


@dataclass(frozen=True)
class Login:
    """One MQTT login: its name (== client id, forced by the broker), role and federations;
    a bridge (a site broker) also names the devices behind it."""

    name: str
    role: str
    federations: tuple[str, ...] = (ALL_FEDERATIONS,)
    devices: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = {"role": self.role, "federations": list(self.federations)}
        return {**d, "devices": list(self.devices)} if self.devices else d

    @classmethod
    def from_json(cls, name: str, d: dict) -> "Login":
        return cls(name, str(d["role"]), tuple(str(f) for f in d["federations"]),
                   tuple(str(x) for x in d.get("devices", ())))


def _device_rules(fed: str, me: str) -> list[str]:
    mine = f"{ROOT}/{fed}/clients/{me}"
    return [f"topic write {mine}/status",
            f"topic write {mine}/upload/+/+",  # upload/<round>/<chunk>, nothing deeper
            f"topic write {mine}/inference",
            f"topic readwrite {mine}/session",  # the session token (fedmekt.transport.mqtt): a second session is seen
            f"topic write {mine}/sync",  # what it holds, on every (re)connect (fedmekt/wire/sync.py)
            f"topic read {mine}/status",
            f"topic read {mine}/reply/#",  # the aggregator's answer
            *(f"topic read {ROOT}/{fed}/{t}" for t in ("rounds", "global/#", "proxy/#", "models/#", "metrics",
                                                           "liveness"))]


def _aggregator_rules(fed: str) -> list[str]:
    own = ("rounds", "global/#", "proxy/#", "models/#", "metrics", "liveness", "aggregator/session")
    return [*(f"topic readwrite {ROOT}/{fed}/{t}" for t in own), f"topic read {ROOT}/{fed}/clients/#",
            f"topic write {ROOT}/{fed}/clients/+/reply/#"]  # sync answers


def bridge_state_topic(fed: str, site: str) -> str:
    """Where a site broker's bridge says whether its link to the lab is up (retained ``1`` / ``0``, its Will)."""
    return f"{ROOT}/{fed}/bridges/{site}/state"


def _bridge_rules(fed: str, login: Login) -> list[str]:
    """Exactly what its devices may do, relayed on their behalf (the shared read rules once), and its state."""
    relayed = [r for device in login.devices for r in _device_rules(fed, device)]
    return [*dict.fromkeys(relayed), f"topic write {bridge_state_topic(fed, login.name)}"]


def rules(login: Login) -> list[str]:
    """The login's ``topic <access> <pattern>`` lines (a site broker's bridge subscribes by them too)."""
    out: list[str] = []
    for fed in login.federations:
        if login.role == "device":
            out += _device_rules(fed, login.name)
        elif login.role == "bridge":
            out += _bridge_rules(fed, login)
        elif login.role == "aggregator":
            out += _aggregator_rules(fed)
        elif login.role == "janitor":  # clears what a revoked login left (fedmekt.provisioning.janitor)
            out.append(f"topic readwrite {ROOT}/{fed}/clients/#")
        else:  # monitor: reads everything of its federations, publishes nothing
            out.append(f"topic read {ROOT}/{fed}/#")
    return out


def render_acl(logins: list[Login]) -> str:
    """The acl_file text; a login missing from it (revoked, unknown) has no rights at all."""
    out = ["# fedmekt topic ACL, written by `fedmekt provision` from the operator's registry: do not edit,",
           "# re-run `fedmekt provision add/remove` instead. One block per login; no `pattern` lines,",
           "# so no login gets rights meant for another role. Topic scheme: fedmekt/wire/topics.py."]
    for login in sorted(logins, key=lambda x: (ROLES.index(x.role), x.name)):
        feds = ", ".join("all federations" if f == ALL_FEDERATIONS else f for f in login.federations)
        relays = f", relays {', '.join(login.devices)}" if login.devices else ""
        out += ["", f"# {login.role} {login.name} ({feds}{relays})", f"user {login.name}", *rules(login)]
    return "\n".join(out) + "\n"
