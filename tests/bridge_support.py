"""Site brokers bridged to the lab broker, for the bridged-topology tests.

The lab is the shipped secured mosquitto (TLS, logins, ACL) the harness provisions; each site is a
mosquitto started from the bridge config ``fedmekt provision bridge`` writes, its gateways on a plain
loopback listener. Each bridge reaches the lab through a :class:`WanLink`, the site's WAN line, which
the test can cut and restore while both brokers and every connection to them stay up.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from fedmekt.transport.broker import MosquittoProcess, free_port, start_mosquitto
from fedmekt.provisioning.acl import bridge_state_topic
from fedmekt.provisioning.bridge import BRIDGE_CONF, provision_bridge
from federation_harness import ProcessFederation


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class WanLink:
    """A TCP line from a site to the lab's listener. ``cut`` closes the line's connections and refuses new
    ones (a WAN link down: the bridge sees its connection drop and its reconnects fail), ``restore`` brings
    it back on the same port. TLS runs through it end to end; it only copies bytes."""

    def __init__(self, lab_port: int):
        self.lab_port, self.port = lab_port, free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                site, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                lab = socket.create_connection(("127.0.0.1", self.lab_port), timeout=5)
            except OSError:
                site.close()
                continue
            lab.settimeout(None)
            with self._lock:
                self._sockets += [site, lab]
            for src, dst in ((site, lab), (lab, site)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):  # one side ended: so does the other
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self._listener is not None:
            _close(self._listener)  # shutdown wakes the accept() blocked on it
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)


@dataclass
class Site:
    name: str
    devices: tuple[str, ...]
    broker: MosquittoProcess
    link: WanLink
    folder: Path  # what `fedmekt provision bridge` wrote (bridge.conf, lab-ca.crt)


class BridgedFederation(ProcessFederation):
    """The harness's secured federation with the aggregator and recorder on the lab broker and the clients
    split over site brokers bridged to it: ``sites`` maps a site name to the client indices behind it."""

    def __init__(self, tmp: Path, sites: dict[str, tuple[int, ...]], **kw):
        super().__init__(tmp, secure=True, **kw)
        assert self.secure is not None
        provisioned = []
        for name, members in sites.items():
            devices = tuple(self.client_ids[i] for i in members)
            link = WanLink(self.secure.port)
            folder = provision_bridge(self.secure.folder, name, self.federation, devices,
                                      f"mqtts://localhost:{link.port}")
            provisioned.append((name, devices, link, folder))
        self.secure.broker.reload()  # as the operator does after provisioning
        # run as root (CI), mosquitto would drop to the `mosquitto` user, which cannot read pytest's 0700 folders
        stay = "user root\n" if os.geteuid() == 0 else ""
        self.sites: dict[str, Site] = {}
        try:
            for name, devices, link, folder in provisioned:
                conf = stay + (folder / BRIDGE_CONF).read_text()
                self.sites[name] = Site(name, devices, start_mosquitto(workdir=tmp / f"site-{name}", extra_config=conf),
                                        link, folder)
            for name in self.sites:
                self.wait_bridge(name, b"1", 30)
        except BaseException:
            self.close()
            raise

    def site_of(self, cid: str) -> Site:
        return next(s for s in self.sites.values() if cid in s.devices)

    def _broker_args(self, user: str) -> tuple[list[str], dict[str, str]]:
        if user in self.client_ids:  # a gateway talks to its site broker only
            return ["--broker", self.site_of(user).broker.url], {**os.environ, "PYTHONUNBUFFERED": "1"}
        return super()._broker_args(user)

    def bridge_states(self, name: str) -> list[bytes]:
        """What the lab has heard on the bridge's state topic, in order (1 up, 0 its Will)."""
        topic = bridge_state_topic(self.federation, name)
        return [p for _, t, p in self.recorder.snapshot() if t == topic]

    def wait_bridge(self, name: str, state: bytes, timeout: float) -> None:
        self.wait_until(lambda: self.bridge_states(name)[-1:] == [state], timeout,
                        f"bridge {name} state {state.decode()} on the lab broker")

    def close(self) -> None:
        super().close()
        for site in self.sites.values():
            site.link.cut()
            site.broker.stop()
