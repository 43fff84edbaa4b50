"""The dashboard's HTTP side: ``/`` the page, ``/api/state`` the JSON it polls; nothing else, GET only.

The page is one file with its script inline; the Content-Security-Policy allows exactly that script
(by hash) and requests to this server, so even a broker message that slipped past validation could
not run code in the browser. On a loopback address the Host header must name loopback too, which
keeps other web sites from reading the state through DNS rebinding.

Connections are bounded in time and number: each gets ``request_timeout`` seconds in all (a
half-open or slowly dripped request is cut then, by the serving loop, whatever its pace), and at most
``max_connections`` are served at once; one more is closed at once, so a flood of idle sockets costs a
bounded number of threads and clears within the timeout.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
REQUEST_TIMEOUT_S = 10.0  # the page and its state are small: a browser on any network is done far sooner
MAX_CONNECTIONS = 32  # served at once; the page polls one request at a time per viewer


def load_page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (the inline script's sha256)."""
    page = files("fedmekt.observe.dashboard").joinpath("page.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
           f"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page.encode(), csp


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class DashboardServer(ThreadingHTTPServer):
    """Serves ``state()`` (a JSON-ready dict) and the page; ``serve_in_thread`` for tests and the CLI."""

    daemon_threads = True
    request_queue_size = 64  # the kernel's accept queue; the accept loop itself never blocks on a client
    block_on_close = False  # closing never waits on a client; the deadline ends its thread

    def __init__(self, bind: str, port: int, state: Callable[[], dict], *,
                 request_timeout: float = REQUEST_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        self.state = state
        self.page, self.csp = load_page()
        self.loopback_only = is_loopback(bind)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.refused = 0  # connections closed at once because max_connections were being served
        self._open: dict[socket.socket, float] = {}  # connection -> monotonic deadline
        self._open_lock = threading.Lock()
        super().__init__((bind, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def process_request(self, request, client_address) -> None:
        with self._open_lock:
            full = len(self._open) >= self.max_connections
            if not full:
                self._open[request] = time.monotonic() + self.request_timeout
        if full:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("dashboard: %d connections open, refused %d so far", self.max_connections, self.refused)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)

    def handle_error(self, request, client_address) -> None:  # a client that went away: not worth a traceback
        log.debug("dashboard: connection from %s ended with an error", client_address, exc_info=True)

    def service_actions(self) -> None:
        """Called by the serving loop every poll interval: cut connections past their deadline."""
        now = time.monotonic()
        with self._open_lock:
            late = [sock for sock, deadline in self._open.items() if deadline <= now]
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the handler's blocked read; its thread then ends
            except OSError:
                pass

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def serve_in_thread(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "fedmekt-dashboard"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # each read too (StreamRequestHandler applies it)
        super().setup()

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if self.server.loopback_only and not self._host_is_loopback():
            return self._send(421, b"this dashboard answers to localhost only\n", "text/plain", body)
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self._send(200, self.server.page, "text/html; charset=utf-8", body)
        if path == "/api/state":
            try:
                data = json.dumps(self.server.state(), allow_nan=False).encode()
            except (TypeError, ValueError) as exc:  # cannot happen with a validated view; say so, don't crash
                log.error("dashboard state is not JSON: %s", exc)
                return self._send(500, b'{"error": "state unavailable"}', "application/json", body)
            return self._send(200, data, "application/json", body)
        self._send(404, b"not found\n", "text/plain", body)

    def _host_is_loopback(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_NAMES

    def _send(self, code: int, data: bytes, ctype: str, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", self.server.csp)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # one line per poll would flood the service log
        log.debug("%s %s", self.address_string(), format % args)
