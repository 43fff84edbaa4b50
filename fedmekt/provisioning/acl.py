"""The topic ACL, rendered from the registry of logins: one block per login, no ``pattern`` lines.

``pattern`` lines apply to every login, so they let the monitor and the aggregator publish
as if they were clients; per-login blocks give each role exactly its rights, and a device
only its own federations and the protocol's exact topics (``fedmekt/wire/topics.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmekt.wire.topics import ROOT

ROLES = ("device", "aggregator", "monitor")
ALL_FEDERATIONS = "+"


@dataclass(frozen=True)
class Login:
    """One MQTT login: its name (== client id, forced by the broker), role and federations."""

    name: str
    role: str
    federations: tuple[str, ...] = (ALL_FEDERATIONS,)

    def to_json(self) -> dict:
        return {"role": self.role, "federations": list(self.federations)}

    @classmethod
    def from_json(cls, name: str, d: dict) -> "Login":
        return cls(name, str(d["role"]), tuple(str(f) for f in d["federations"]))


def _device_rules(fed: str, me: str) -> list[str]:
    mine = f"{ROOT}/{fed}/clients/{me}"
    return [f"topic write {mine}/status",
            f"topic write {mine}/upload/+/+",  # upload/<round>/<chunk>, nothing deeper
            f"topic write {mine}/inference",
            f"topic readwrite {mine}/session",  # the session token (fedmekt.mqtt): a second session is seen
            f"topic read {mine}/status",
            *(f"topic read {ROOT}/{fed}/{t}" for t in ("rounds", "global/#", "proxy/#", "models/#", "metrics"))]


def _aggregator_rules(fed: str) -> list[str]:
    own = ("rounds", "global/#", "proxy/#", "models/#", "metrics", "aggregator/session")
    return [*(f"topic readwrite {ROOT}/{fed}/{t}" for t in own), f"topic read {ROOT}/{fed}/clients/#"]


def _rules(login: Login) -> list[str]:
    rules: list[str] = []
    for fed in login.federations:
        if login.role == "device":
            rules += _device_rules(fed, login.name)
        elif login.role == "aggregator":
            rules += _aggregator_rules(fed)
        else:  # monitor: reads everything of its federations, publishes nothing
            rules.append(f"topic read {ROOT}/{fed}/#")
    return rules


def render_acl(logins: list[Login]) -> str:
    """The acl_file text; a login missing from it (revoked, unknown) has no rights at all."""
    out = ["# fedmekt topic ACL, written by `fedmekt provision` from the operator's registry: do not edit,",
           "# re-run `fedmekt provision add/remove` instead. One block per login; no `pattern` lines,",
           "# so no login gets rights meant for another role. Topic scheme: fedmekt/wire/topics.py."]
    for login in sorted(logins, key=lambda x: (ROLES.index(x.role), x.name)):
        feds = ", ".join("all federations" if f == ALL_FEDERATIONS else f for f in login.federations)
        out += ["", f"# {login.role} {login.name} ({feds})", f"user {login.name}", *_rules(login)]
    return "\n".join(out) + "\n"
