"""Push model packages over MQTT (aggregator) and receive + install them (gateway).

On the wire a package is one *bundle* — a safetensors file holding each package file as a
uint8 tensor (pickle-free, strictly parsed) — cut into ≤ 256 KiB chunks published
retained on ``models/<version>/<chunk>``, then a retained announcement on
``models/manifest`` (JSON: version, chunks, bytes, sha256 of the bundle). Retained, so a
gateway that (re)connects later still gets the latest package. The announcement is not
trusted: the receiver installs only what verifies against its public key
(:class:`export.install.ModelStore`), so forged or corrupted packages are refused and the
model in service stays. It also installs only packages of its federation and of the run the
signed federation manifest names (:meth:`PackageReceiver.trust_run`): a package of a run it has
not been told of yet waits for that run's manifest, an older run's is refused. A package exported by
hand (``fedmekt export``: no run) is bound to no run, so nothing tells whether it is older than what
the federation publishes: it is refused unless the gateway was told to accept such packages
(``accept_hand_exported``, ``fedmekt client --accept-hand-exported``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from export.install import InstalledModel, ModelStore
from export.package import PackageError, VerifiedPackage, verify_package
from fedmekt.device_classes import CLASSES
from fedmekt.wire.runs import run_order
from fedmekt.wire.topics import Topics

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
MAX_BUNDLE_BYTES = 64 << 20
FORMAT = 1


@dataclass(frozen=True)
class Announcement:
    """The retained ``models/manifest`` message: which bundle to assemble."""

    version: int
    chunks: int
    bytes: int
    sha256: str
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Announcement":
        try:
            d = json.loads(data)
            ann = cls(version=d["version"], chunks=d["chunks"], bytes=d["bytes"], sha256=d["sha256"], format=d["format"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PackageError(f"invalid package announcement: {exc}") from None
        ints = (ann.version, ann.chunks, ann.bytes, ann.format)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or ann.format != FORMAT \
                or ann.version < 0 or not 0 < ann.bytes <= MAX_BUNDLE_BYTES \
                or ann.chunks != -(-ann.bytes // CHUNK_BYTES) or not isinstance(ann.sha256, str) or len(ann.sha256) != 64:
            raise PackageError("invalid package announcement: fields out of range")
        return ann


def bundle(files: Mapping[str, bytes]) -> bytes:
    return safetensors.numpy.save({name: np.frombuffer(data, np.uint8) for name, data in files.items()})


def unbundle(data: bytes) -> dict[str, bytes]:
    try:
        return {name: arr.tobytes() for name, arr in safetensors.numpy.load(data).items()}
    except Exception as exc:  # safetensors raises its own SafetensorError on malformed input
        raise PackageError(f"corrupt package bundle: {exc}") from None


def package_messages(federation: str, package: VerifiedPackage,
                     device_class: str = "") -> tuple[Announcement, list[tuple[str, bytes]]]:
    """The retained messages that publish ``package`` (under ``models/<device_class>/`` when one is given):
    chunks first, the announcement last."""
    base = Topics(federation).models_of(device_class)
    blob = bundle(package.files)
    version = package.manifest.round
    chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
    ann = Announcement(version, len(chunks), len(blob), hashlib.sha256(blob).hexdigest())
    messages = [(f"{base}/{version}/{i}", c) for i, c in enumerate(chunks)]
    return ann, messages + [(f"{base}/manifest", ann.to_bytes())]


def clear_messages(federation: str, old: Announcement, device_class: str = "") -> list[tuple[str, bytes]]:
    """Empty retained payloads that delete a superseded version's chunks from the broker."""
    base = Topics(federation).models_of(device_class)
    return [(f"{base}/{old.version}/{i}", b"") for i in range(old.chunks)]


def publish_package(link, federation: str, package_dir: Path, previous: Announcement | None = None,
                    device_class: str = "") -> Announcement:
    """Publish a built package through a connected :class:`fedmekt.transport.mqtt.MqttLink` (QoS 1, retained).

    Waits for every PUBACK; then clears ``previous``'s chunks if it was another version. ``device_class``: a
    mixed fleet's package of that class, under ``models/<class>/``.
    Returns the announcement to pass as ``previous`` next time.
    """
    ann, messages = package_messages(federation, verify_package(Path(package_dir), None), device_class)
    link.publish_all(messages, retain=True)
    if previous is not None and previous.version != ann.version:
        link.publish_all(clear_messages(federation, previous, device_class), retain=True)
    log.info("published model package version %d (%d bytes, %d chunks)", ann.version, ann.bytes, ann.chunks)
    return ann


class PackageReceiver:
    """Gateway side: assemble announced bundles from ``models/#`` messages and install them.

    Feed every message of ``Topics(federation).models_all`` to :meth:`handle`. A refused
    package is logged as one line (and kept in ``last_error``); the model in service is
    untouched. ``on_installed`` is called with each newly installed model (swap it in).
    """

    def __init__(self, store: ModelStore, federation: str,
                 on_installed: Callable[[InstalledModel], None] | None = None, accept_hand_exported: bool = False,
                 device_class: str | None = None, namespace: str = "") -> None:
        """``device_class``: the gateway's class (a package of another is refused); ``namespace``: read the
        packages under ``models/<namespace>/`` (a mixed fleet's of that class) instead of ``models/``."""
        self.store = store
        self.federation = federation
        self.device_class, self.namespace = device_class, namespace
        self.accept_hand_exported = accept_hand_exported  # install packages bound to no run (``fedmekt export``)
        self.topics = Topics(federation)
        self.trusted_run: str | None = None  # the run of the signed federation manifest (None: none seen yet)
        self._held: dict[str, bytes] | None = None  # a complete package waiting for its run's manifest
        self.on_installed = on_installed
        self.last_error: str | None = None
        self._announced: Announcement | None = None
        self._chunks: dict[int, dict[int, bytes]] = {}
        self._finished: str | None = None  # sha256 of the last bundle handled (retained copies come again)

    @property
    def subscription(self) -> str:
        return self.topics.models_all

    def handle(self, topic: str, payload: bytes) -> InstalledModel | None:
        prefix = self.topics.models_of(self.namespace) + "/"
        if not topic.startswith(prefix) or not payload:
            return None  # not ours, or a cleared retained message
        rest = topic[len(prefix):]
        if not self.namespace and rest.split("/", 1)[0] in CLASSES:
            return None  # a mixed fleet's package of a device class: its own receiver reads it
        try:
            if rest == "manifest":
                self._announced = Announcement.from_bytes(payload)
            else:
                self._add_chunk(rest, payload)
            return self._try_install()
        except PackageError as exc:
            self._refused(exc)
            return None

    def trust_run(self, run: str) -> InstalledModel | None:
        """Follow ``run`` (named by a verified federation manifest); install a package held for it."""
        self.trusted_run = run
        held, self._held = self._held, None
        if held is None:
            return None
        try:
            return self._install(held)
        except PackageError as exc:
            self._refused(exc)
            return None

    def _refused(self, exc: PackageError) -> None:
        self.last_error = str(exc)
        log.error("refused model package: %s; the current model stays in service", exc)

    def _add_chunk(self, rest: str, payload: bytes) -> None:
        parts = rest.split("/")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or len(payload) > CHUNK_BYTES:
            raise PackageError(f"unexpected message on models/{rest}")
        version, index = int(parts[0]), int(parts[1])
        ann = self._announced
        if ann is not None and version == ann.version and index >= ann.chunks:
            return
        # keep chunks of every version (a new version's chunks arrive before its announcement), bounded in memory
        buffered = sum(len(b) for c in self._chunks.values() for b in c.values())
        if buffered + len(payload) > MAX_BUNDLE_BYTES:
            keep = ann.version if ann is not None else version
            self._chunks = {v: c for v, c in self._chunks.items() if v == keep}
        self._chunks.setdefault(version, {})[index] = payload

    def _try_install(self) -> InstalledModel | None:
        ann = self._announced
        if ann is None or ann.sha256 == self._finished:
            return None
        got = self._chunks.get(ann.version, {})
        if len(got) < ann.chunks:
            return None
        blob = b"".join(got[i] for i in range(ann.chunks))
        self._finished = ann.sha256
        self._chunks.pop(ann.version, None)
        if len(blob) != ann.bytes or hashlib.sha256(blob).hexdigest() != ann.sha256:
            raise PackageError(f"version {ann.version}: chunks do not match the announcement (size or sha256)")
        files = unbundle(blob)
        try:
            current = self.store.current()
        except PackageError:
            current = None  # a broken model in service: replace it
        if current is not None and current.package.files == files:
            return None  # already in service
        return self._install(files)

    def _install(self, files: dict[str, bytes]) -> InstalledModel | None:
        run = verify_package(files, self.store.public_key).manifest.run
        trusted = self.trusted_run
        if not run:
            if not self.accept_hand_exported:
                raise PackageError("hand-exported package (bound to no run): installed only by a gateway started "
                                   "with --accept-hand-exported")
            trusted = None  # it names no run to match
        elif run != trusted and (trusted is None or run_order(run) > run_order(trusted)):
            self._held = files  # a run whose manifest has not reached us yet (retained messages come in any order)
            log.info("model package of run %s waits for that run's signed federation manifest", run)
            return None
        installed = self.store.install(files, federation=self.federation, run=trusted, device_class=self.device_class)
        self.last_error = None
        if self.on_installed is not None:
            self.on_installed(installed)
        return installed
