"""Atomic installation of verified model packages on a gateway (a kill at any point is safe).

Layout under the store root::

    versions/<r000012-1a2b3c4d5e6f>/   one complete, verified package per directory
    current                           one line: the directory name in service

Installing writes the package into a fresh ``.staging-*`` directory (every file fsynced),
verifies that copy, renames it into ``versions/`` (atomic) and finally replaces
``current`` with ``os.replace`` (atomic). A kill before the last step leaves the old
pointer, a kill after it the new one; both name complete directories. Leftover staging
directories are removed by the next install.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from export.package import MANIFEST, PackageError, VerifiedPackage, verify_package
from fedmekt.artifacts import atomic_write_bytes

log = logging.getLogger(__name__)

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

    def install(self, source: Path | Mapping[str, bytes],
                on_step: Callable[[str], None] | None = None) -> InstalledModel:
        """Verify ``source`` (a package directory or {file name: bytes}) and put it in service atomically.

        Raises PackageError before touching anything if the package is refused, and
        also refuses a package older than the one in service for the same federation
        (replay of an old signed package). ``on_step`` is called after each durable
        step (progress hooks; the kill tests stop the process there).
        """
        step = on_step or (lambda _name: None)
        package = verify_package(source, self.public_key)
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
        log.info("model package round %d installed as %s", package.manifest.round, name)
        return InstalledModel(final, package)

    def _refuse_stale(self, package: VerifiedPackage) -> None:
        try:
            now = self.current()
        except PackageError:
            return  # the one in service is broken: anything valid is better
        if now and now.package.manifest.federation == package.manifest.federation \
                and package.manifest.round < now.package.manifest.round:
            raise PackageError(f"stale package: round {package.manifest.round} is older than the installed "
                               f"round {now.package.manifest.round}")

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
