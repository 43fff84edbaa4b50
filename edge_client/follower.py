"""The receive-only gateway (``fedmekt client --infer-only``): models in, predictions out, no training.

An inference-only install (``pip install '.[infer]'``: onnxruntime, no torch) runs this. It follows
the federation over MQTT with the same trust rules as the training agent (edge_client/agent.py):

* the signed federation manifest (``proxy/manifest``) is read only for the run it names: signed
  with the aggregator's key, of this federation, never older than the run already followed nor
  than the newest epoch kept on disk (edge_client/trust.py); that run is the one whose packages
  are installed (:meth:`ModelService.trust_run`);
* model packages (``models/#``) are received, verified and installed atomically by the
  :class:`~edge_client.inference.ModelService` (federation, trusted run, monotonic; a refused one
  leaves the model in service);
* each sensor batch is classified by the model in service and the predictions are published
  on ``clients/<id>/inference``.

Presence is a retained birth ``online`` with *no* modalities (and the ``offline`` Last Will): the
aggregator sees the device but never selects it for training. The source is read once a model is in
service (samples before that could not be classified); a finite source ending stops the gateway.
Nothing here imports torch: the proxy set, rounds and global knowledge are not subscribed to.
After every (re)connect it sends a sync request (edge_client/sync.py), so the manifest and the newest
package also reach it through a broker without retained messages.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_client.inference import ModelService
from edge_client.sync import SyncClient, model_class, model_held
from edge_client.trust import RunTrust
from fedmekt.errors import UserError
from fedmekt.transport.mqtt import LinkOptions, Message, MqttLink, Presence
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import WireError
from fedmekt.wire.runs import run_order
from fedmekt.wire.signing import open_signed
from fedmekt.wire.sync import SyncRequest
from fedmekt.wire.topics import Topics

log = logging.getLogger("edge_client")


@dataclass
class FollowerOptions:
    client_id: str
    federation: str
    models: ModelService
    public_key: object  # Ed25519PublicKey: the manifest must carry the aggregator's signature
    link: LinkOptions | None = None
    state_dir: Path | None = None  # where the newest trusted run epoch persists (edge_client/trust.py)
    min_epoch: int = 0  # runs of an older epoch are refused (provisioned)


class InferenceGateway:
    """Follows one federation's packages and classifies a sensor source with the model in service."""

    def __init__(self, url: str, options: FollowerOptions):
        if options.public_key is None:
            raise ValueError("an inference-only gateway installs only verified packages: it needs the public key")
        self.url, self.opts = url, options
        self.topics = Topics(options.federation)
        self.run_followed: str | None = None  # the run of the last verified federation manifest
        self.trust = RunTrust(options.state_dir, options.federation, options.min_epoch)
        self.published = 0
        self.link: MqttLink | None = None
        self.model_ready = threading.Event()  # a model is in service: the source may be read
        self.sync = SyncClient(self.topics, options.client_id, lambda: SyncRequest(
            run=self.run_followed or "", proxy=None, model=model_held(self.opts.models),
            device_class=model_class(self.opts.models)),
            unserved=lambda: self.run_followed is None)

    def run(self, source, stop: threading.Event | None = None) -> int:
        """Serve until ``source`` ends (or ``stop`` is set); returns the number of predictions published."""
        cid = self.opts.client_id
        presence = Presence(self.topics.status(cid), fedwire.Status("online", ()).to_bytes(),
                            fedwire.Status("offline", ()).to_bytes())
        stop = stop or threading.Event()
        options = self.opts.link or LinkOptions(client_id=cid, username=cid)
        reader = threading.Thread(target=self._read, args=(source, stop), daemon=True, name="source")
        subs = [self.topics.proxy_manifest, self.opts.models.subscription, self.sync.subscription]
        with MqttLink(self.url, options, presence, subs).connect() as link:
            self.link = link
            if self.opts.models.recognizer is not None:
                self.model_ready.set()
            else:
                log.info("%s: waiting for a model package of federation %s", cid, self.opts.federation)
            reader.start()
            while not stop.is_set():
                msg = link.get(timeout=0.2)
                if msg is not None:
                    self._dispatch(self.sync.unwrap(msg))
                self.sync.step(link)
        reader.join(5)
        self.link = None
        return self.published

    def _read(self, source, stop: threading.Event) -> None:
        """Classify every batch of ``source`` once a model is in service; set ``stop`` when it ends."""
        try:
            while not self.model_ready.wait(0.2):
                if stop.is_set():
                    return
            with source.start():
                for batch in source:
                    self.recognise(batch)
                    if stop.is_set():
                        return
            log.info("%s: source ended after %d predictions", self.opts.client_id, self.published)
        finally:
            stop.set()

    def _dispatch(self, msg: Message) -> None:
        try:
            if msg.topic == self.topics.proxy_manifest:
                self._on_manifest(open_signed(self.opts.public_key, msg.topic, msg.payload))
            else:
                self.opts.models.handle(msg.topic, msg.payload)
        except WireError as exc:
            log.warning("%s: ignored message on %s: %s", self.opts.client_id, msg.topic, exc.reason)
        except UserError as exc:  # an installed package this device cannot run (e.g. not its modality)
            log.error("%s: model package not put in service: %s", self.opts.client_id, exc)
        if self.opts.models.recognizer is not None:
            self.model_ready.set()

    def _on_manifest(self, payload: bytes) -> None:
        if not payload:
            return
        manifest = fedwire.FederationManifest.from_bytes(payload)
        if self.run_followed is not None and run_order(manifest.run) < run_order(self.run_followed):
            raise WireError(f"manifest of run {manifest.run} is older than the run {self.run_followed} followed")
        self.trust.check(manifest.run)
        self.trust.follow(manifest.run)  # verified (the public key is mandatory here)
        self.run_followed = manifest.run
        self.opts.models.trust_run(manifest.run, manifest.name)

    def recognise(self, batch) -> int:
        """Classify a raw batch and publish its predictions (dropped while disconnected)."""
        predictions = self.opts.models.feed(batch)
        link = self.link
        if not predictions or link is None or not link.connected:
            return 0
        link.publish_all((self.topics.inference(self.opts.client_id), p.to_json().encode()) for p in predictions)
        self.published += len(predictions)
        return len(predictions)
