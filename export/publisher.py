"""What the aggregator calls to push a signed package every N rounds and at the end."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from export.build import BuiltPackage, build_package
from export.push import Announcement, publish_package
from export.run_model import RunModel

log = logging.getLogger(__name__)


@dataclass
class PackagePublisher:
    """Builds ``out_root/r<round>/`` from the live global model and publishes it (retained) over ``link``.

    ``link`` is a connected :class:`fedmekt.transport.mqtt.MqttLink`; ``every`` = 0 publishes only at the end.
    Every package is bound to ``run`` (the federation run id) in its signed manifest.
    Older package directories are removed once a newer one is published.
    """

    link: object
    federation: str
    key: Ed25519PrivateKey
    out_root: Path
    every: int = 10
    int8: bool = False
    run: str = ""
    device_class: str = ""   # signed into each package: the class whose gateways install it ("" = any)
    namespace: str = ""      # a mixed fleet's class: published under models/<class>/ ("" = models/)
    previous: Announcement | None = None
    built: BuiltPackage | None = None  # the newest package published (the aggregator's sync answers resend it)
    _last_dir: Path | None = None

    def due(self, round_: int, final: bool = False) -> bool:
        return final or (self.every > 0 and round_ > 0 and round_ % self.every == 0)

    def maybe_publish(self, run: RunModel, round_: int, final: bool = False) -> BuiltPackage | None:
        """Call after every round (``final=True`` after the last): publishes when due."""
        if not self.due(round_, final) or (self.previous is not None and self.previous.version == round_):
            return None
        return self.publish(run, round_)

    def publish(self, run: RunModel, round_: int) -> BuiltPackage:
        out = Path(self.out_root) / f"r{round_:06d}"
        shutil.rmtree(out, ignore_errors=True)  # a rebuilt round (e.g. after a resume) replaces the old files
        built = build_package(run, out, self.key, int8=self.int8, round_=round_, run_id=self.run,
                              device_class=self.device_class)
        self.previous = publish_package(self.link, self.federation, built.path, previous=self.previous,
                                        device_class=self.namespace)
        self.built = built
        if self._last_dir is not None and self._last_dir != out:
            shutil.rmtree(self._last_dir, ignore_errors=True)
        self._last_dir = out
        return built

    def newest(self) -> dict[str, BuiltPackage]:
        """The newest package published, by the namespace it went out under (empty before the first)."""
        return {} if self.built is None else {self.namespace: self.built}
