"""A 3-node NATS cluster speaking MQTT 3.1.1 on loopback, rendered from ``deploy/nats/node.conf.template``.

Every port is a free one picked at start (never the system NATS on 4222); each node has its own
JetStream store under the test's tmp_path. ``kill`` SIGKILLs one node, as a crashed machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedmekt.errors import UserError
from fedmekt.transport.broker import free_port, wait_for_port
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from federation_harness import ProcessFederation

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deploy" / "nats" / "node.conf.template"


def nats_server() -> str:
    """Debian's nats-server; installed with apt when missing and we may (CI runs as root)."""
    found = shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server")
                                                 if os.access(p, os.X_OK)), None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "nats-server"]
        if subprocess.run(install, capture_output=True, timeout=900).returncode != 0:  # no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
            subprocess.run(install, capture_output=True, timeout=900)
        found = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK)
                                                else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is missing and could not be installed (apt-get install nats-server)")
        pytest.skip("nats-server not installed (apt-get install nats-server)")
    return found


def render(template: str, **values: object) -> str:
    """Fill the template's ``@key@`` placeholders (NATS configs use braces and ``$`` themselves)."""
    for key, value in values.items():
        template = template.replace(f"@{key}@", str(value))
    if "@" in template.split("#")[0]:
        raise ValueError("unfilled placeholder in the NATS template")
    return template


@dataclass
class NatsNode:
    name: str
    mqtt_port: int
    client_port: int
    cluster_port: int
    config: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"


class NatsCluster:
    """Three nats-server processes routed to each other, JetStream and MQTT on every node."""

    def __init__(self, workdir: Path, size: int = 3, cluster: str = "fedmekt"):
        self.binary = nats_server()
        self.workdir, self.size, self.cluster = workdir, size, cluster
        workdir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[NatsNode] = []

    def _render(self) -> None:
        """Each node's config on freshly picked ports."""
        ports = [(free_port(), free_port(), free_port()) for _ in range(self.size)]
        template = TEMPLATE.read_text()
        self.nodes = []
        for i, (mqtt, client, route) in enumerate(ports):
            name = f"n{i + 1}"
            routes = "\n".join(f"    nats-route://127.0.0.1:{p[2]}" for j, p in enumerate(ports) if j != i)
            config = self.workdir / f"{name}.conf"
            shutil.rmtree(self.workdir / f"{name}-js", ignore_errors=True)  # no JetStream state from a failed try
            config.write_text(render(template, name=name, client_port=client, cluster_port=route, mqtt_port=mqtt,
                                     cluster=self.cluster, routes=routes, store_dir=self.workdir / f"{name}-js"))
            self.nodes.append(NatsNode(name, mqtt, client, route, config))

    def start(self, timeout: float = 60.0, tries: int = 3) -> "NatsCluster":
        """Every node up and accepting MQTT. The nine ports are picked from the ephemeral range, so one may be
        taken by another process before its node binds it; that node exits, and the cluster starts again on
        fresh ports. (A fresh-clone CI run once saw a node's MQTT port stay closed for 30 s; its log was not kept,
        and this clash is the likely cause: the error now carries every node's log.)"""
        for attempt in range(1, tries + 1):
            self._render()
            for node in self.nodes:
                self._spawn(node)
            try:
                for node in self.nodes:
                    wait_for_port("127.0.0.1", node.mqtt_port, timeout, process=node.process)
                break
            except UserError as exc:
                logs = "\n".join(f"{n.name}: {self.log(n)[-600:]}" for n in self.nodes)
                self.stop()
                if attempt == tries:
                    raise AssertionError(f"NATS cluster did not start in {tries} tries: {exc}\n{logs}") from None
        self.wait_ready(timeout)
        return self

    def _spawn(self, node: NatsNode) -> None:
        log = open(self.workdir / f"{node.name}.log", "a")
        node.process = subprocess.Popen([self.binary, "-c", str(node.config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_ready(self, timeout: float) -> None:
        """Every live node accepts an MQTT session (JetStream has elected its leaders)."""
        deadline = time.monotonic() + timeout
        for node in self.live():
            while True:
                try:
                    MqttLink(node.url, LinkOptions(client_id=f"probe-{node.name}", protocol="3.1.1")).connect(
                        timeout=max(1.0, min(5.0, deadline - time.monotonic()))).close()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"NATS node {node.name} not ready:\n{self.log(node)[-2000:]}") from None
                    time.sleep(0.5)

    @property
    def url(self) -> str:
        """The first node (what a single-broker helper such as the harness's recorder connects to)."""
        return self.nodes[0].url

    @property
    def port(self) -> int:
        return self.nodes[0].mqtt_port

    def live(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def urls(self, first: int = 0) -> str:
        """The failover list starting at node ``first``, the others after it in ring order."""
        n = len(self.nodes)
        return ",".join(self.nodes[(first + k) % n].url for k in range(n))

    def kill(self, index: int) -> None:
        proc = self.nodes[index].process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log(self, node: NatsNode) -> str:
        path = self.workdir / f"{node.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
                try:
                    node.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()


class NatsFederation(ProcessFederation):
    """A process federation on the cluster: the aggregator on node 1, client i on node i mod 3 first, each
    given the whole ring as its failover list; the recorder watches from node 1."""

    def __init__(self, tmp: Path, cluster: NatsCluster, **kw):
        self.cluster = cluster
        super().__init__(tmp, broker=cluster, **kw)

    def home(self, user: str) -> int:
        """The node a party connects to first."""
        return 0 if user == "aggregator" else self.client_ids.index(user) % len(self.cluster.nodes)

    def _broker_args(self, user: str) -> tuple[list[str], dict[str, str]]:
        return ["--broker", self.cluster.urls(self.home(user))], {**os.environ, "PYTHONUNBUFFERED": "1"}
