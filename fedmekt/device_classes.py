"""Device classes: the encoder width a gateway can afford, and which classes a federation accepts (issue 22).

FedMEKT exchanges embeddings, never parameters, so gateways of one federation need not run one model. A
class scales the encoder's hidden width (``cfg.hidden`` × factor: 16 / 32 / 64 at the default 32) and keeps
the representation size r: every upload and every downlink keeps its shape [W, T, r], so the server's mean,
the KD terms (mean-teacher or relational) and the proxy windows work across widths unchanged. LSTM depth is
not a class knob: the split autoencoder's two LSTMs are its exchanged layers (fedmekt/learn/model.py).

The federation's ``fleet`` names the classes it accepts: one class ("standard", the default, or "small" for
baseline (a)), "mixed" (all three) or a comma list. The server keeps ONE global model of the widest accepted
class (it runs on the lab server, and a wider teacher loses nothing for the narrower students distilled from
it); every other class gets an encoder of its own width distilled from it (fedmekt/learn/class_models.py).
"""

from __future__ import annotations

from collections.abc import Sequence

CLASSES = ("small", "standard", "large")   # narrow to wide
WIDTH_FACTOR = {"small": 0.5, "standard": 1.0, "large": 2.0}
MIXED = "mixed"
DEFAULT = "standard"   # what a gateway that declares no class runs (every gateway before classes existed)


def parse_fleet(fleet: str) -> tuple[str, ...]:
    """The classes ``fleet`` accepts, narrow to wide; ValueError naming the bad part."""
    if not isinstance(fleet, str) or not fleet.strip():
        raise ValueError(f"fleet must name device classes ({', '.join(CLASSES)}) or {MIXED!r}, got {fleet!r}")
    if fleet.strip() == MIXED:
        return CLASSES
    names = [p.strip() for p in fleet.split(",")]
    unknown = [n for n in names if n not in CLASSES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"fleet must name distinct device classes of {', '.join(CLASSES)} (or {MIXED!r}), "
                         f"got {fleet!r}")
    return tuple(c for c in CLASSES if c in names)


def hidden_for(hidden: int, device_class: str) -> int:
    """The encoder hidden width of ``device_class`` when the standard class has ``hidden``."""
    return max(1, round(hidden * WIDTH_FACTOR[device_class]))


def global_class(fleet: str) -> str:
    """The class of the server's global model: the widest the federation accepts."""
    return parse_fleet(fleet)[-1]


def resolve(fleet: str, declared: str | None) -> str:
    """The class a gateway runs: the one it declares, else the fleet's only class, else the standard one."""
    accepted = parse_fleet(fleet)
    if declared is not None:
        return declared
    return accepted[0] if len(accepted) == 1 else DEFAULT


def refusal(fleet: str, federation: str, device_class: str) -> str | None:
    """One line saying why ``device_class`` may not join (None: accepted)."""
    accepted = parse_fleet(fleet)
    if device_class in accepted:
        return None
    what = "an unknown device class" if device_class not in CLASSES else "a device class it does not accept"
    return (f"{device_class!r} is {what} for federation {federation} (it accepts: {', '.join(accepted)}; "
            f"choose one with --device-class)")


def assign(fleet: str, client_ids: Sequence[str]) -> dict[str, str]:
    """The in-process fleet: the sorted client ids dealt round-robin over the accepted classes, narrow first
    (``mixed`` = a third each). Deterministic, so ``reproduce`` and ``simulate`` build the same fleet."""
    accepted = parse_fleet(fleet)
    return {cid: accepted[i % len(accepted)] for i, cid in enumerate(sorted(client_ids))}


def manifest_refusal(config: dict, declared: str | None) -> str | None:
    """:func:`refusal` for a gateway declaring ``declared`` (or nothing) against a federation config as it travels
    in the manifest (a dict from the network: a fleet this version cannot read is a refusal too)."""
    fleet = config.get("fleet", DEFAULT)
    try:
        return refusal(fleet, str(config.get("federation", "?")), resolve(fleet, declared))
    except ValueError as exc:
        return f"this gateway cannot read the federation's fleet: {exc}"
