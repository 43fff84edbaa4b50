"""The federation manifest and the proxy set on the wire (published once, retained).

The aggregator publishes, retained, on ``proxy/manifest`` a small JSON document — the
federation config every party must build identically, channels, label names, the
normaliser, the proxy set's segments and the sha256 of its tensor message (the dataset
*version*) — and on ``proxy/<chunk>`` the proxy rows of both modalities as one codec
message (kind "proxy", always float32 so every party embeds bit-identical windows).
Afterwards a round announcement only names proxy window start rows; no proxy data
travels per round. Under ``proxy_delivery`` "round" no proxy set is published (empty hash):
the raw windows of Π_t travel inside each round's global knowledge instead. A client may instead be provisioned with the same two payloads
(``save_bundle`` / ``load_bundle``) and never download them.

The manifest names its run twice: ``run``, the id that orders runs (``e<epoch>-<hex>``, fedmekt/wire/runs.py),
and ``name``, the run's folder name the operator sees in ``fedmekt runs`` (optional within version 1: a
manifest of an earlier release has none).

With a signing key the manifest and the announcements travel signed (:mod:`fedmekt.wire.signing`);
the parsers here read either form (observers such as ``fedmekt status``), and a client with the
public key verifies the envelope before it parses anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmekt.wire.codec import _ID, WireError, WireLimits, decode_body, encode, parse_frame
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.runs import RUN_NAME, check_run_name
from fedmekt.wire.signing import unwrap
from sensors.partition import FederatedSplit, Normalizer, Partition

MANIFEST_VERSION = 1
MAX_MANIFEST = 1024 * 1024
AGGREGATOR_ID = "aggregator"


def config_key(config: dict) -> str:
    """What must not change across a resume: everything but the number of rounds (a run may be extended)."""
    return json.dumps({k: v for k, v in config.items() if k != "rounds"}, sort_keys=True)


@dataclass
class FederationManifest:
    """What a client needs from the aggregator before its first round."""

    config: dict
    channels: dict[str, int]
    label_names: tuple[str, ...]
    segments: list[list[int]]  # proxy segments [start, stop)
    proxy_rows: int
    proxy_sha256: str  # message sha256 of the proxy tensors ("" when the algorithm needs no proxy)
    norm_mean: dict[str, list[float]]
    norm_std: dict[str, list[float]]
    run: str = ""  # id of this federation run (kept across aggregator restarts, new for a fresh start)
    name: str = ""  # the run's name: its folder's ("" when the aggregator gave none, or an earlier release's)

    def to_bytes(self) -> bytes:
        d = {"v": MANIFEST_VERSION, "run": self.run, "name": self.name, "config": self.config,
             "channels": self.channels, "label_names": list(self.label_names), "segments": self.segments,
             "proxy_rows": self.proxy_rows, "proxy_sha256": self.proxy_sha256, "norm_mean": self.norm_mean,
             "norm_std": self.norm_std}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "FederationManifest":
        """Validate a manifest from the network; WireError with the reason."""
        raw = unwrap(raw)
        if len(raw) > MAX_MANIFEST:
            raise WireError("manifest too large")
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WireError("manifest is not JSON") from None
        if not isinstance(d, dict) or d.get("v") != MANIFEST_VERSION:
            raise WireError("manifest has an unknown version")
        try:
            m = cls(config=d["config"], channels=d["channels"], label_names=tuple(d["label_names"]),
                    segments=d["segments"], proxy_rows=d["proxy_rows"], proxy_sha256=d["proxy_sha256"],
                    norm_mean=d["norm_mean"], norm_std=d["norm_std"], run=d["run"],
                    name=d.get("name", ""))  # optional: an earlier release's manifest has no name
        except (KeyError, TypeError):
            raise WireError("manifest lacks fields") from None
        ok = (isinstance(m.config, dict)
              and isinstance(m.channels, dict) and all(isinstance(v, int) and 0 < v < 4096 for v in m.channels.values())
              and all(isinstance(x, str) for x in m.label_names)
              and isinstance(m.proxy_rows, int) and m.proxy_rows >= 0
              and isinstance(m.segments, list)
              and all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) for v in s)
                      and 0 <= s[0] < s[1] <= m.proxy_rows for s in m.segments)
              and isinstance(m.proxy_sha256, str) and isinstance(m.run, str) and len(m.run) <= 64
              and isinstance(m.name, str) and (m.name == "" or RUN_NAME.match(m.name) is not None))
        if not ok:
            raise WireError("manifest fields have wrong types or ranges")
        return m

    def federation_config(self):
        from fedmekt.config import FederationConfig
        from fedmekt.errors import UserError

        try:
            return FederationConfig.from_dict(self.config)
        except UserError as exc:
            raise WireError(f"manifest config rejected: {exc}") from None

    @property
    def normalizer(self) -> Normalizer | None:
        if not self.norm_mean:
            return None
        return Normalizer({m: np.asarray(v, np.float32) for m, v in self.norm_mean.items()},
                          {m: np.asarray(v, np.float32) for m, v in self.norm_std.items()})


def build(cfg, split: FederatedSplit, limits: WireLimits = WireLimits(),
          run: str = "", name: str = "") -> tuple[FederationManifest, list[bytes]]:
    """Manifest and proxy frames for ``split`` (none for the parameter-exchange baselines, nor when Π_t travels
    with each round's knowledge: ``proxy_delivery`` "round"). ``name``: the run's name (ValueError for one no
    receiver would accept: a federation nobody joins)."""
    if name:
        check_run_name(name)
    frames: list[bytes] = []
    if cfg.proxy_delivery_for(len(split.proxy)) == "once":
        frames = encode({m: split.proxy.modalities[m] for m in cfg.pair}, "float32", federation=cfg.federation,
                        round_=0, sender=AGGREGATOR_ID, kind="proxy", modalities=tuple(cfg.pair), limits=limits)
    sha = parse_frame(frames[0], limits)[0].sha256 if frames else ""
    norm = split.normalizer
    manifest = FederationManifest(
        config=cfg.to_dict(), channels=dict(split.channels), label_names=tuple(split.label_names),
        segments=[[int(a), int(b)] for a, b in split.proxy.segments], proxy_rows=len(split.proxy),
        proxy_sha256=sha, run=run, name=name,
        norm_mean={m: [float(v) for v in norm.mean[m]] for m in cfg.pair} if norm else {},
        norm_std={m: [float(v) for v in norm.std[m]] for m in cfg.pair} if norm else {})
    return manifest, frames


class ProxyReceiver:
    """Reassembles the proxy message of a known manifest and checks it against the manifest's hash."""

    def __init__(self, manifest: FederationManifest, limits: WireLimits = WireLimits(max_message=1 << 30,
                                                                                  max_round=1 << 30)):
        self.manifest = manifest
        self._re = Reassembler(limits, max_pending=2)
        self.proxy: Partition | None = None

    def add(self, payload: bytes) -> Partition | None:
        header, body = parse_frame(payload, self._re.limits)
        if header.kind != "proxy" or header.sha256 != self.manifest.proxy_sha256:
            raise WireError("proxy frame does not belong to the announced proxy set")
        done = self._re.add_parsed(header, body)
        if done is not None:
            pair = tuple(self.manifest.config["pair"])
            spec = {m: ((self.manifest.proxy_rows, self.manifest.channels[m]), "float32") for m in pair}
            self.proxy = to_partition(self.manifest, decode_body(done.header, done.body, spec))
        return self.proxy


def to_partition(manifest: FederationManifest, tensors: dict[str, np.ndarray]) -> Partition:
    segs = np.asarray(manifest.segments, dtype=np.int64).reshape(-1, 2)
    return Partition(dict(tensors), np.full(manifest.proxy_rows, -1, np.int64), segs, ("proxy",))


def save_bundle(path: Path, manifest: FederationManifest, frames: list[bytes]) -> None:
    """Provisioning file: the manifest and the proxy frames, so a device needs no download."""
    from safetensors.numpy import save

    from fedmekt.artifacts import atomic_write_bytes

    blob = {f"frame{i:05d}": np.frombuffer(f, dtype=np.uint8) for i, f in enumerate(frames)}
    blob["manifest"] = np.frombuffer(manifest.to_bytes(), dtype=np.uint8)
    atomic_write_bytes(Path(path), save(blob))


def load_bundle(path: Path) -> tuple[FederationManifest, Partition | None]:
    """Read and validate a provisioning bundle (same checks as over the network)."""
    from safetensors.numpy import load_file

    try:
        blob = load_file(str(path))
    except Exception as exc:  # missing or not safetensors
        raise WireError(f"cannot read bundle {path}: {exc}") from None
    if "manifest" not in blob:
        raise WireError("bundle lacks its manifest")
    manifest = FederationManifest.from_bytes(blob.pop("manifest").tobytes())
    rx = ProxyReceiver(manifest)
    for key in sorted(blob):
        rx.add(blob[key].tobytes())
    if manifest.proxy_sha256 and rx.proxy is None:
        raise WireError("bundle's proxy set is incomplete")
    return manifest, rx.proxy


# ---- small JSON control messages ---------------------------------------------------------------
MAX_CONTROL = 256 * 1024
NONCE_MAX = 32  # hex digits of a liveness nonce
LIVENESS_VERSION = 1
SPREAD_MAX_S = 600.0  # the longest a challenge may ask gateways to spread their answers over
_HEX = re.compile(r"^[0-9a-f]{0,64}$")


def _json(raw: bytes, what: str) -> dict:
    raw = unwrap(raw)
    if len(raw) > MAX_CONTROL:
        raise WireError(f"{what} too large")
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError(f"{what} is not JSON") from None
    if not isinstance(d, dict):
        raise WireError(f"{what} is not a JSON object")
    return d


ANNOUNCEMENT_VERSION = 2  # 2: a round's time is a duration ("timeout"), never an absolute time
MAX_ROUND_TIMEOUT = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Announcement:
    """Retained on ``rounds``: the current plan and how long it is open, or the end of the federation.

    ``timeout`` is a duration, not a time of day: each receiver counts it on its own monotonic clock
    from the moment the announcement reached it (:meth:`deadline_from`), so a gateway whose wall
    clock is off (a Raspberry Pi has no real-time clock) still takes part.
    """

    federation: str
    plan: dict | None  # RoundPlan.to_json(); None when done
    timeout: float  # seconds the round stays open after the announcement (0 when done)
    done: bool = False
    rounds: int = 0  # rounds completed (when done)
    run: str = ""  # the manifest's run id: announcements of another run are ignored
    nonce: str = ""  # per round, echoed in every upload header: binds uploads to this announcement
    global_sha256: str = ""  # sha256 of the round's global knowledge message: its chunks need no signature

    def to_bytes(self) -> bytes:
        return json.dumps({"v": ANNOUNCEMENT_VERSION, "federation": self.federation, "plan": self.plan,
                           "timeout": self.timeout, "done": self.done, "rounds": self.rounds, "run": self.run,
                           "nonce": self.nonce, "global_sha256": self.global_sha256}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Announcement":
        d = _json(raw, "announcement")
        if d.get("v") != ANNOUNCEMENT_VERSION:
            raise WireError("announcement has an unknown version (an aggregator of another release?)")
        try:
            a = cls(d["federation"], d["plan"], float(d["timeout"]), bool(d["done"]), int(d["rounds"]), str(d["run"]),
                    str(d.get("nonce", "")), str(d.get("global_sha256", "")))
        except (KeyError, TypeError, ValueError):
            raise WireError("announcement lacks fields") from None
        if not (_HEX.match(a.nonce) and len(a.nonce) <= 32 and _HEX.match(a.global_sha256)):
            raise WireError("announcement has a bad nonce or global hash")
        if not 0 <= a.timeout <= MAX_ROUND_TIMEOUT:  # also refuses NaN
            raise WireError("announcement has a bad timeout")
        if not a.done and not isinstance(a.plan, dict):
            raise WireError("announcement has no plan")
        return a

    def deadline_from(self, received: float, expiry: float | None = None) -> float:
        """The round's deadline on this receiver's ``time.monotonic()``: ``timeout`` after ``received`` (when
        the message arrived), or sooner when the broker says the retained copy expires sooner (MQTT 5 gives a
        retained message's remaining expiry: a late joiner learns how much of the round is left, clock-free)."""
        left = self.timeout if expiry is None else min(self.timeout, float(expiry))
        return received + left

    def round_plan(self):
        """The validated RoundPlan (WireError on anything malformed)."""
        from fedmekt.learn.engine import RoundPlan

        try:
            return RoundPlan.from_json(self.plan)
        except ValueError as exc:
            raise WireError(f"bad plan: {exc}") from None


@dataclass(frozen=True)
class Status:
    """Retained on ``clients/<id>/status``: presence and the modalities a client holds. A live (not retained)
    "online" also carries ``proof``: the newest :class:`LivenessChallenge` nonce the client heard."""

    state: str  # "online" | "offline"
    modalities: tuple[str, ...] = ()
    proof: str = ""  # the liveness challenge's nonce it echoes ("" = none: the retained birth and Will)
    device_class: str | None = None  # the class the gateway declares (fedmekt/device_classes.py); None: none declared

    def to_bytes(self) -> bytes:
        d = {"state": self.state, "modalities": list(self.modalities)}
        if self.proof:
            d["proof"] = self.proof
        if self.device_class is not None:
            d["device_class"] = self.device_class
        return json.dumps(d).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Status":
        d = _json(raw, "status")
        state, mods, proof = d.get("state"), d.get("modalities", []), d.get("proof", "")
        device_class = d.get("device_class")
        if state not in ("online", "offline") or not isinstance(mods, list) \
                or not all(isinstance(m, str) and _ID.match(m) for m in mods) or len(mods) > 16 \
                or not isinstance(proof, str) or not _HEX.match(proof) or len(proof) > NONCE_MAX \
                or not (device_class is None or isinstance(device_class, str) and _ID.match(device_class)):
            raise WireError("bad status message")
        return cls(state, tuple(mods), proof, device_class)


@dataclass(frozen=True)
class LivenessChallenge:
    """Retained (and signed) on ``liveness``: the nonce a client's live status must echo to count as alive now.

    The aggregator draws a new one when it starts, as each round opens and after a reconnect, so a status is
    proof only of the time since the nonce it echoes was issued: one queued in the aggregator's saved session
    while it was down, or replayed, echoes a nonce this aggregator never issued (aggregator/presence.py).
    ``spread``: the seconds over which gateways answer it, each after a random delay, so that a new nonce does
    not make the whole fleet answer at once (aggregator/presence.py sizes it; absent, as from an older
    aggregator: at once).
    """

    federation: str
    nonce: str
    spread: float = 0.0

    def to_bytes(self) -> bytes:
        d: dict = {"v": LIVENESS_VERSION, "federation": self.federation, "nonce": self.nonce}
        if self.spread:
            d["spread"] = self.spread
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LivenessChallenge":
        d = _json(raw, "liveness challenge")
        fed, nonce, spread = d.get("federation"), d.get("nonce"), d.get("spread", 0.0)
        if d.get("v") != LIVENESS_VERSION or not isinstance(fed, str) or not _ID.match(fed) \
                or not isinstance(nonce, str) or not _HEX.match(nonce) or not 16 <= len(nonce) <= NONCE_MAX \
                or isinstance(spread, bool) or not isinstance(spread, (int, float)) \
                or not 0 <= spread <= SPREAD_MAX_S:  # NaN and infinities fail the comparison too
            raise WireError("bad liveness challenge")
        return cls(fed, nonce, float(spread))
