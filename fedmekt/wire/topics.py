"""MQTT topic scheme, all under ``fedmekt/<federation>/``.

| topic | publisher | retained | what |
|---|---|---|---|
| ``rounds`` | aggregator | yes | current round announcement (plan: round, selected clients, proxy windows) |
| ``global/<round>/<chunk>`` | aggregator | no | downstream global knowledge for that round, chunked |
| ``proxy/manifest`` and ``proxy/<chunk>`` | aggregator | yes | the versioned, hashed proxy set (sent once) |
| ``models/manifest`` and ``models/<version>/<chunk>`` | aggregator | yes | signed ONNX model packages |
| ``models/<class>/manifest``, ``models/<class>/<version>/<chunk>`` | aggregator | yes | a mixed fleet's per-class packages |
| ``metrics`` | aggregator | no | per-round metrics (JSON) |
| ``liveness`` | aggregator | yes | the nonce a live status must echo (new per aggregator start, round and reconnect) |
| ``aggregator/session`` | aggregator | yes | random token of the running aggregator session (detects a second one) |
| ``clients/<id>/status`` | client (and its Last Will) | yes | online + modalities (live: echo ``liveness``); offline |
| ``clients/<id>/upload/<round>/<chunk>`` | client | no | upstream embeddings or parameters |
| ``clients/<id>/inference`` | client | no | on-device predictions (JSON lines) |
| ``clients/<id>/session`` | client | yes | random token of the running gateway session (detects a second one) |
| ``clients/<id>/sync`` | client | no | sync request on every (re)connect: what it holds (fedmekt/wire/sync.py) |
| ``clients/<id>/reply/<topic>`` | aggregator | no | the answer: copies of the ``<topic>`` messages it lacks |
| ``clients/<id>/reply/resend`` | aggregator | no | the round's signed announcement: its upload never arrived, send it again |

Retained messages are an optimisation: a broker without them (or a cluster node that does not
replicate them) loses nothing, since every client asks on each (re)connect and the aggregator answers
on the client's own ``reply/`` topics with the very payloads (and signatures) it published.

A device's MQTT username equals its client id, so the broker ACL (rendered by
``fedmekt/provisioning/acl.py``) confines each device to exactly its ``clients/<id>/…`` topics.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "fedmekt"
REPLIED = ("proxy/", "global/", "models/")  # besides ``rounds``, the topics whose copies a sync answer carries


@dataclass(frozen=True)
class Topics:
    federation: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.federation}"

    @property
    def rounds(self) -> str:
        return f"{self.prefix}/rounds"

    @property
    def resend(self) -> str:
        """Not published to: its copy on ``reply/resend`` asks a client for an upload that never arrived."""
        return f"{self.prefix}/resend"

    def global_chunk(self, round_: int, chunk: int) -> str:
        return f"{self.prefix}/global/{round_}/{chunk}"

    @property
    def global_all(self) -> str:
        return f"{self.prefix}/global/#"

    @property
    def proxy_manifest(self) -> str:
        return f"{self.prefix}/proxy/manifest"

    def proxy_chunk(self, chunk: int) -> str:
        return f"{self.prefix}/proxy/{chunk}"

    @property
    def proxy_all(self) -> str:
        return f"{self.prefix}/proxy/#"

    @property
    def models_manifest(self) -> str:
        return f"{self.prefix}/models/manifest"

    def model_chunk(self, version: int, chunk: int) -> str:
        return f"{self.prefix}/models/{version}/{chunk}"

    def models_of(self, device_class: str = "") -> str:
        """Where the packages of ``device_class`` are published (a mixed fleet's; "" = the federation's one)."""
        return f"{self.prefix}/models" + (f"/{device_class}" if device_class else "")

    @property
    def models_all(self) -> str:
        return f"{self.prefix}/models/#"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}/metrics"

    @property
    def liveness(self) -> str:
        return f"{self.prefix}/liveness"

    @property
    def aggregator_session(self) -> str:
        return f"{self.prefix}/aggregator/session"

    def status(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/status"

    @property
    def status_all(self) -> str:
        return f"{self.prefix}/clients/+/status"

    def upload_chunk(self, client_id: str, round_: int, chunk: int) -> str:
        return f"{self.prefix}/clients/{client_id}/upload/{round_}/{chunk}"

    @property
    def uploads_all(self) -> str:
        return f"{self.prefix}/clients/+/upload/#"

    def inference(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/inference"

    def session(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/session"

    def sync(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/sync"

    @property
    def sync_all(self) -> str:
        return f"{self.prefix}/clients/+/sync"

    def reply(self, client_id: str, topic: str) -> str:
        """Where the aggregator sends ``client_id`` its copy of the federation topic ``topic``."""
        return f"{self.prefix}/clients/{client_id}/reply/{topic[len(self.prefix) + 1:]}"

    def replies(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/reply/#"

    def replied(self, client_id: str, topic: str) -> str | None:
        """The federation topic a reply on ``topic`` stands for; None unless it is one a sync answers."""
        head = f"{self.prefix}/clients/{client_id}/reply/"
        rest = topic[len(head):] if topic.startswith(head) else ""
        if rest in ("rounds", "liveness") or rest.startswith(REPLIED):
            return f"{self.prefix}/{rest}"
        return None
