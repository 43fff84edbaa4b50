"""Signed model packages of the run (export/publisher.py): published every ``package_every`` rounds and at the
end, bound to this run; the newest (a mixed fleet's: of each device class) is kept so sync answers and a
reconnect can send it again."""

from __future__ import annotations

import logging
from pathlib import Path

from aggregator.fleet import package_publisher
from fedmekt.concurrency import TORCH_RNG_LOCK

log = logging.getLogger("aggregator")


class Packages:
    """The run's package publisher (None without a signing key) and the newest package published."""

    def __init__(self, federation: str, signing_key, enabled: bool, every: int, out: Path):
        self.federation, self.signing_key, self.enabled, self.every, self.out = \
            federation, signing_key, enabled, every, out
        self._publisher = None  # PackagePublisher or aggregator.fleet.ClassPackages when a signing key is given

    def start(self, link, run_id: str, cfg, server) -> None:
        if self.signing_key is None or not self.enabled:
            return
        self._publisher = package_publisher(cfg, server, link, self.signing_key, self.out / "packages", self.every,
                                            run_id)

    def publish(self, server, final: bool) -> None:
        """Publish the global model as a signed package when due. A failed export never stops the rounds, but a
        run whose final package cannot be published ends with that error: its gateways would keep an old model."""
        if self._publisher is None:
            return
        from export.run_model import RunModel

        try:
            with TORCH_RNG_LOCK:
                if not self._publisher.due(server.rounds_completed, final):
                    return   # the deployed model is fine-tuned only for a package that goes out
                self._publisher.maybe_publish(RunModel.of(server.run_info(), server.deployed()),
                                              server.rounds_completed, final=final)
        except Exception as exc:  # noqa: BLE001 - the federation goes on; clients keep the model in service
            log.error("model package after round %d not published: %s", server.rounds_completed, exc)
            if final:
                from fedmekt.errors import UserError

                raise UserError(f"the run's final model package was not published: {exc} (the checkpoint in "
                                f"{self.out} holds the model: `fedmekt export` builds it by hand)") from None

    def newest(self) -> dict:
        """The newest package published (export.build.BuiltPackage) by namespace: "" for a fleet of one class (it
        goes out under ``models/``), each class for a mixed fleet (``models/<class>/``); empty before the first."""
        return {} if self._publisher is None else self._publisher.newest()

    def messages(self, namespace: str | None = None) -> list[tuple[str, bytes]]:
        """The retained messages of the newest package under ``namespace`` (None: of every namespace)."""
        from export.package import verify_package
        from export.push import package_messages

        return [m for ns, built in self.newest().items() if namespace is None or ns == namespace
                for m in package_messages(self.federation, verify_package(built.path, None), ns)[1]]
