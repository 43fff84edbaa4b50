"""A federation view kept current by a background thread that reads the broker (never publishes)."""

from __future__ import annotations

import logging
import threading
import time

from fedmekt.observe.live_view import FederationView
from fedmekt.transport.mqtt import LinkOptions, MqttLink

log = logging.getLogger(__name__)


class LiveView:
    """Subscribes to a federation's topics and answers :meth:`state` from any thread."""

    def __init__(self, url: str, options: LinkOptions, federation: str):
        self.view = FederationView(federation)
        options.session_expiry = 0  # an observer wants no queued backlog after a restart
        self.link = MqttLink(url, options, subscriptions=self.view.subscriptions)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="dashboard-mqtt", daemon=True)

    def start(self) -> "LiveView":
        """Connect (UserError when the broker cannot be reached) and start following."""
        self.link.connect()
        self._thread.start()
        return self

    def _pump(self) -> None:
        while not self._stop.is_set():
            msg = self.link.get(timeout=0.2)
            if msg is not None:
                with self._lock:
                    self.view.absorb(msg)

    def state(self) -> dict:
        """The status summary plus what the page draws: per-round curves (the rows of ``last_metrics``' run, numbered
        alike) and this round's uploads."""
        now = time.time()
        with self._lock:
            out = self.view.summary(now)
            history = [self.view.history[r] for r in sorted(self.view.history)]
            uploads = self.view.round_uploads(out["round_index"])
        a = self.link.address
        out.update(broker=f"{a.host}:{a.port}", connected=self.link.connected, now=now,
                   round_uploads=uploads, history=[row.view() for row in history])
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)
        self.link.close()

