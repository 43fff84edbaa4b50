"""The sync request: how a (re)connected client gets the protocol's state without retained messages.

A broker without retained messages (``retain_available false``, a restarted broker without
persistence, a cluster node that keeps them node-local) leaves a client that connects late with
no manifest, proxy set, round or package. So on every (re)connect a client publishes on
``clients/<id>/sync`` what it holds, and the aggregator answers on ``clients/<id>/reply/…`` with
the very payloads it published (signed ones keep their signature over the original topic) for
what the client lacks. Where the broker keeps retained messages the client asks only once their
copies have stopped arriving (edge_client/sync.py), so the answer is usually empty; where it does
not, at once.

The request is unsigned (a device has no key); its topic names the client, which the broker's
ACL confines to its own login, and the aggregator validates it and answers each client at most
once per few seconds, each bulky part at most once per longer interval (aggregator/sync.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from fedmekt.wire.codec import WireError

SYNC_VERSION = 1
MAX_SYNC = 1024
_RUN = re.compile(r"^[0-9a-zA-Z\-]{0,64}$")
_HEX = re.compile(r"^[0-9a-f]{0,64}$")
_CLASS = re.compile(r"^[a-z]{0,16}$")  # a device class's name; which ones a federation accepts, its aggregator says


def _round(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -1 <= x < 2**31


@dataclass(frozen=True)
class SyncRequest:
    """What a client holds; the aggregator sends what it lacks."""

    run: str = ""  # run id of the manifest it follows ("" = none)
    proxy: str | None = ""  # sha256 of the proxy set it holds ("" = none; None = it does not train)
    round: int = -1  # latest round announcement seen (-1 = none)
    uploaded: int = -1  # latest round it uploaded for
    model: tuple[str, int] | None = None  # (run, round) of the installed package; None = it takes no packages
    liveness: str = ""  # the liveness challenge's nonce it holds ("" = none: the answer carries the current one)
    device_class: str = ""  # the class whose packages it installs (a mixed fleet's models/<class>/; "" = models/)

    @property
    def trains(self) -> bool:
        return self.proxy is not None

    def to_bytes(self) -> bytes:
        return json.dumps({"v": SYNC_VERSION, "run": self.run, "proxy": self.proxy, "round": self.round,
                           "uploaded": self.uploaded, "model": list(self.model) if self.model else None,
                          "liveness": self.liveness, "class": self.device_class},
                          separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SyncRequest":
        """Validate a request from the network; WireError with the reason."""
        if len(raw) > MAX_SYNC:
            raise WireError("sync request too large")
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WireError("sync request is not JSON") from None
        if not isinstance(d, dict) or d.get("v") != SYNC_VERSION:
            raise WireError("sync request has an unknown version")
        run, proxy, model, liveness = d.get("run"), d.get("proxy"), d.get("model"), d.get("liveness", "")
        device_class = d.get("class", "")
        ok = (isinstance(run, str) and _RUN.match(run)
              and (proxy is None or isinstance(proxy, str) and _HEX.match(proxy))
              and _round(d.get("round")) and _round(d.get("uploaded"))
              and (model is None or isinstance(model, list) and len(model) == 2 and isinstance(model[0], str)
                   and _RUN.match(model[0]) and _round(model[1]))
              and isinstance(liveness, str) and _HEX.match(liveness) and len(liveness) <= 32
              and isinstance(device_class, str) and _CLASS.fullmatch(device_class) is not None)
        if not ok:
            raise WireError("sync request fields have wrong types or ranges")
        return cls(run, proxy, d["round"], d["uploaded"], (model[0], model[1]) if model else None, liveness,
                   device_class)
