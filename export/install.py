"""Atomic installation of verified model packages on a gateway (a kill at any point is safe).

Layout under the store root::

    versions/<r000012-1a2b3c4d5e6f>/   one complete, verified package per directory
    current                           one line: the directory name in service

Installing writes the package into a fresh ``.staging-*`` directory (every file fsynced),
verifies that copy, renames it into ``versions/`` (atomic) and finally replaces
``current`` with ``os.replace`` (atomic). A kill before the last step leaves the old
pointer, a kill after it the new one; both name complete directories. Leftover staging
directories are removed by the next install.

Freshness: an install names the gateway's federation and the run its signed federation manifest
names; a package of another federation or run is refused, and so is one ordered before the
package in service by (signed run order, round) — a new run's round 5 supersedes the previous
run's round 6, an old run's retained package never replaces a newer one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from export.package import MANIFEST, Manifest, PackageError, VerifiedPackage, verify_package
from fedmekt.artifacts import atomic_write_bytes
from fedmekt.wire.runs import run_order

CURRENT = "current"
VERSIONS = "versions"
STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class InstalledModel:
    path: Path
    package: VerifiedPackage


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def freshness(manifest: Manifest) -> tuple[int, int]:
    """How packages of one federation are ordered: signed run order first, round within a run."""
    return run_order(manifest.run), manifest.round


def refuse_unfit(manifest: Manifest, federation: str | None, run: str | None, device_class: str | None = None) -> None:
    """PackageError unless the package is of ``federation``, ``run`` and ``device_class`` (each checked when not
    None; a package naming no class fits every class)."""
    if federation is not None and manifest.federation != federation:
        raise PackageError(f"package of federation {manifest.federation!r}; this gateway serves {federation!r}")
    if device_class is not None and manifest.device_class and manifest.device_class != device_class:
        raise PackageError(f"package for device class {manifest.device_class!r}; this gateway is "
                           f"{device_class!r} (--device-class)")
    if run is not None and manifest.run != run:
        raise PackageError(f"package of run {manifest.run or '(none)'}; the signed federation manifest names "
                           f"run {run or '(none)'}")


class ModelStore:
    """The gateway's model directory; every package is verified against ``public_key`` before use."""

    def __init__(self, root: Path, public_key: Ed25519PublicKey, keep: int = 2) -> None:
        if public_key is None:
            raise ValueError("a model store needs the aggregator's public key: it never installs unverified packages")
        self.root = Path(root)
        self.public_key = public_key
        self.keep = max(1, keep)
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)

    def current(self) -> InstalledModel | None:
        """The verified package in service, or None when nothing was ever installed."""
        try:
            name = (self.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        path = self.root / VERSIONS / name
        if not name or os.sep in name or not path.is_dir():
            raise PackageError(f"{self.root / CURRENT} points to {name!r}, which is not an installed package")
        return InstalledModel(path, verify_package(path, self.public_key))

    def install(self, source: Path | Mapping[str, bytes], on_step: Callable[[str], None] | None = None, *,
                federation: str | None = None, run: str | None = None,
                device_class: str | None = None) -> InstalledModel:
        """Verify ``source`` (a package directory or {file name: bytes}) and put it in service atomically.

        Raises PackageError before touching anything if the package is refused: when it is
        not of ``federation``, ``run`` or ``device_class`` (each checked when given), or older than the
        one in service for the same federation (replay of an old signed package, or of an
        older run's). ``on_step`` is called after each durable step (progress hooks; the
        kill tests stop the process there).
        """
        step = on_step or (lambda _name: None)
        package = verify_package(source, self.public_key)
        refuse_unfit(package.manifest, federation, run, device_class)
        self._refuse_stale(package)
        name = f"r{package.manifest.round:06d}-{hashlib.sha256(package.files[MANIFEST]).hexdigest()[:12]}"
        final = self.root / VERSIONS / name
        with self._lock():
            self._remove_leftovers()
            if not self._is_valid(final):
                staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
                for file_name, data in package.files.items():
                    with open(staging / file_name, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    step(f"wrote {file_name}")
                _fsync_dir(staging)
                verify_package(staging, self.public_key)  # what is on disk, not what was in memory
                step("staged")
                if final.exists():  # an invalid directory of that name: move it out of the way first
                    os.rename(final, Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root)) / "old")
                os.rename(staging, final)
                _fsync_dir(final.parent)
                step("renamed")
            atomic_write_bytes(self.root / CURRENT, f"{name}\n".encode())
            step("switched")
            self._prune(keep_name=name)
            step("cleaned")
        return InstalledModel(final, package)

    def _refuse_stale(self, package: VerifiedPackage) -> None:
        try:
            now = self.current()
        except PackageError:
            return  # the one in service is broken: anything valid is better
        new, old = package.manifest, now.package.manifest if now else None
        if old is not None and old.federation == new.federation and freshness(new) < freshness(old):
            raise PackageError(f"stale package: run {new.run or '(none)'} round {new.round} is older than the "
                               f"installed run {old.run or '(none)'} round {old.round}")

    def _is_valid(self, path: Path) -> bool:
        try:
            return path.is_dir() and verify_package(path, self.public_key) is not None
        except PackageError:
            return False

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive flock on ``.lock``: one installer at a time per store."""
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _remove_leftovers(self) -> None:
        for path in self.root.iterdir():
            if path.name.startswith(STAGING_PREFIX) or path.name.startswith(f".{CURRENT}.tmp-"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _prune(self, keep_name: str) -> None:
        """Keep the one in service plus the newest ``keep - 1`` others (for a manual rollback)."""
        others = sorted((p for p in (self.root / VERSIONS).iterdir() if p.name != keep_name), reverse=True)
        for path in others[self.keep - 1:]:
            shutil.rmtree(path, ignore_errors=True)
