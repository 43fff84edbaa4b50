"""Signed model packages: ONNX files + ``manifest.json`` + ``manifest.sig`` (Ed25519).

The aggregator signs the exact manifest bytes with its private key; the manifest lists
the sha256 and size of every ONNX file. A gateway accepts a package only if the
signature verifies against its configured public key *and* every file matches, so a
tampered, truncated or unsigned package is refused with one line (:class:`PackageError`).
A package the aggregator publishes is bound to its (federation, run, round) inside the signed
manifest, so a gateway can refuse another federation's package, an old run's retained one and a
rollback within a run (:mod:`export.install`); runs are ordered by their signed run id
(:mod:`fedmekt.wire.runs`), not by round numbers. A package exported by hand has no run ("").
This module imports neither torch nor onnx: gateways run it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmekt.artifacts import atomic_write_bytes
from fedmekt.errors import UserError

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 64 << 20
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}\.onnx$")  # no path separators, no dot-files
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PackageError(Exception):
    """A package that must not be used; the message is one line saying why."""


@dataclass(frozen=True)
class ModelFile:
    """One modality's ONNX encoder+head and what a gateway must do to its raw samples first."""

    modality: str
    file: str
    channels: int
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    sha256: str
    bytes: int

    def normalise(self, x):
        """z-score raw samples [..., C] with the training statistics (float32)."""
        return ((x - np.asarray(self.norm_mean, np.float32)) / np.asarray(self.norm_std, np.float32)).astype(np.float32)


@dataclass(frozen=True)
class Manifest:
    """What the package holds and how to run it; ``round`` doubles as the package version."""

    federation: str
    round: int
    algorithm: str
    dataset: str
    label_names: tuple[str, ...]
    window: int
    stride: int
    rate_hz: float
    rep_size: int
    precision: str  # "fp32" or "int8"
    models: tuple[ModelFile, ...]
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)
    run: str = ""  # the federation run that produced it ("" = exported by hand, bound to no run)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m.modality for m in self.models)

    @property
    def device_class(self) -> str:
        """The device class whose gateways run this package (signed, in ``extra``; "" = any: hand-exported or
        made before classes)."""
        return self.extra.get("device_class", "")

    def model(self, modality: str) -> ModelFile:
        for m in self.models:
            if m.modality == modality:
                return m
        raise KeyError(modality)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        """Parse and validate untrusted manifest bytes; PackageError on anything unexpected."""
        try:
            d = json.loads(data.decode("utf-8"))
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            if d.get("format") != FORMAT:
                raise ValueError(f"unsupported format {d.get('format')!r} (expected {FORMAT})")
            models = tuple(_model_file(m) for m in _typed(d, "models", list))
            run = d.get("run", "")  # absent in packages made before runs were bound
            if not isinstance(run, str):
                raise ValueError("field 'run' has the wrong type")
            manifest = cls(
                federation=_typed(d, "federation", str), round=_typed(d, "round", int),
                algorithm=_typed(d, "algorithm", str), dataset=_typed(d, "dataset", str),
                label_names=tuple(_typed(d, "label_names", list)), window=_typed(d, "window", int),
                stride=_typed(d, "stride", int), rate_hz=float(_typed(d, "rate_hz", (int, float))),
                rep_size=_typed(d, "rep_size", int), precision=_typed(d, "precision", str), models=models,
                extra=_typed(d, "extra", dict), run=run,
            )
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            raise PackageError(f"invalid manifest: {exc}") from None
        manifest._validate()
        return manifest

    def _validate(self) -> None:
        problems = []
        if self.round < 0 or self.window < 1 or not 1 <= self.stride <= self.window or self.rep_size < 1 \
                or not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            problems.append("round/window/stride/rep_size/rate_hz out of range")
        if not self.label_names or not all(isinstance(n, str) and n for n in self.label_names):
            problems.append("label_names must be non-empty strings")
        if len(self.run) > 64:
            problems.append("run id longer than 64 characters")
        if not isinstance(self.device_class, str) or len(self.device_class) > 64:
            problems.append("device_class must be a short string")
        if self.precision not in ("fp32", "int8"):
            problems.append(f"unknown precision {self.precision!r}")
        if not self.models or len({m.modality for m in self.models}) != len(self.models) \
                or len({m.file for m in self.models}) != len(self.models):
            problems.append("models must be non-empty with distinct modalities and files")
        if problems:
            raise PackageError(f"invalid manifest: {'; '.join(problems)}")


def _typed(d: dict, key: str, kind):
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field {key!r} has the wrong type")
    return value


def _model_file(d: Any) -> ModelFile:
    if not isinstance(d, dict):
        raise ValueError("models entries must be objects")
    mean = tuple(float(v) for v in _typed(d, "norm_mean", list))
    std = tuple(float(v) for v in _typed(d, "norm_std", list))
    m = ModelFile(modality=_typed(d, "modality", str), file=_typed(d, "file", str), channels=_typed(d, "channels", int),
                  norm_mean=mean, norm_std=std, sha256=_typed(d, "sha256", str), bytes=_typed(d, "bytes", int))
    if not _FILE_NAME.match(m.file):
        raise ValueError(f"file name {m.file!r} not allowed")
    if not _SHA256.match(m.sha256) or not 0 < m.bytes <= MAX_FILE_BYTES:
        raise ValueError(f"bad sha256/bytes for {m.file}")
    if m.channels < 1 or len(mean) != m.channels or len(std) != m.channels:
        raise ValueError(f"{m.modality}: normalisation statistics do not match {m.channels} channels")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f"{m.modality}: normalisation statistics must be finite with std > 0")
    return m


def file_entry(modality: str, path: Path, channels: int, norm_mean, norm_std) -> ModelFile:
    """Describe an ONNX file on disk for the manifest (hash and size computed here)."""
    data = Path(path).read_bytes()
    return ModelFile(modality, Path(path).name, int(channels), tuple(float(v) for v in norm_mean),
                     tuple(float(v) for v in norm_std), hashlib.sha256(data).hexdigest(), len(data))


# --- keys -----------------------------------------------------------------------------------------

def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair (PEM); the private key file is created 0600 and never overwritten."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path, public_path = Path(private_path), Path(public_path)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{private_path} already exists; refusing to overwrite a signing key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
        fh.flush()
        os.fsync(fh.fileno())
    atomic_write_bytes(public_path, public_pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    if b"PUBLIC KEY-----" in _read_key(path):
        raise UserError(f"{path} is a public key: signing needs the private key (the .key file of "
                        "`fedmekt export keygen`, kept on the aggregator)")
    key = _load_key(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = _load_key(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 public key")
    return key


def _read_key(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read key {path}: {exc.strerror}") from None


def _load_key(path: Path, loader, **kwargs):
    data = _read_key(path)
    try:
        return loader(data, **kwargs)
    except (ValueError, TypeError):
        raise UserError(f"{path} is not a PEM Ed25519 key (`fedmekt export keygen` makes a pair)") from None


# --- writing and verifying ------------------------------------------------------------------------

def sign_package(out_dir: Path, manifest: Manifest, key: Ed25519PrivateKey) -> None:
    """Write ``manifest.json`` and ``manifest.sig`` next to the ONNX files the manifest lists."""
    data = manifest.to_bytes()
    Manifest.from_bytes(data)  # never sign something a gateway would reject
    atomic_write_bytes(Path(out_dir) / MANIFEST, data)
    atomic_write_bytes(Path(out_dir) / SIGNATURE, key.sign(data))


@dataclass(frozen=True)
class VerifiedPackage:
    """A package whose signature (when a key was given) and file hashes were checked; ``files`` are those bytes."""

    manifest: Manifest
    files: dict[str, bytes]
    signed: bool

    def onnx_bytes(self, modality: str) -> bytes:
        return self.files[self.manifest.model(modality).file]


def package_files(source: Path | Mapping[str, bytes]) -> dict[str, bytes]:
    """Read the manifest, signature and listed files of a package directory (absent files are left out)."""
    if isinstance(source, Mapping):
        return dict(source)
    src = Path(source)
    if not src.is_dir():
        raise PackageError(f"{src} is not a directory")
    files: dict[str, bytes] = {}
    for name in (MANIFEST, SIGNATURE):
        if (src / name).is_file():
            files[name] = _read_limited(src / name, MAX_MANIFEST_BYTES)
    if MANIFEST in files:
        try:
            names = [m["file"] for m in json.loads(files[MANIFEST])["models"]]
        except (ValueError, KeyError, TypeError):
            names = []  # verify_package reports the invalid manifest
        for name in names:
            if isinstance(name, str) and _FILE_NAME.match(name) and (src / name).is_file():
                files[name] = _read_limited(src / name, MAX_FILE_BYTES)
    return files


def _read_limited(path: Path, limit: int) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise PackageError(f"{path.name} is larger than {limit} bytes")
    return data


def verify_package(source: Path | Mapping[str, bytes], public_key: Ed25519PublicKey | None) -> VerifiedPackage:
    """Check signature and every file; raise PackageError (one line) on the first problem.

    ``public_key=None`` checks integrity only (hashes and sizes) and marks the result
    unsigned: callers must say so to the user — a gateway in service always passes its key.
    """
    files = package_files(source)
    if MANIFEST not in files:
        raise PackageError(f"not a model package: {MANIFEST} is missing")
    if public_key is not None:
        if SIGNATURE not in files:
            raise PackageError(f"unsigned package: {SIGNATURE} is missing")
        try:
            public_key.verify(files[SIGNATURE], files[MANIFEST])
        except InvalidSignature:
            raise PackageError("bad signature: the manifest was not signed by the configured key or was altered") from None
    manifest = Manifest.from_bytes(files[MANIFEST])
    for m in manifest.models:
        data = files.get(m.file)
        if data is None:
            raise PackageError(f"{m.file} listed in the manifest is missing")
        if len(data) != m.bytes:
            raise PackageError(f"{m.file} is truncated or altered ({len(data)} bytes, manifest says {m.bytes})")
        if hashlib.sha256(data).hexdigest() != m.sha256:
            raise PackageError(f"{m.file} is altered (sha256 does not match the manifest)")
    keep = {MANIFEST, SIGNATURE, *(m.file for m in manifest.models)}
    return VerifiedPackage(manifest, {k: v for k, v in files.items() if k in keep}, public_key is not None)
