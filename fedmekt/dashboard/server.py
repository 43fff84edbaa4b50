"""The dashboard's HTTP side: ``/`` the page, ``/api/state`` the JSON it polls; nothing else, GET only.

The page is one file with its script inline; the Content-Security-Policy allows exactly that script
(by hash) and requests to this server, so even a broker message that slipped past validation could
not run code in the browser. On a loopback address the Host header must name loopback too, which
keeps other web sites from reading the state through DNS rebinding.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def load_page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (the inline script's sha256)."""
    page = files("fedmekt.dashboard").joinpath("page.html").read_text(encoding="utf-8")
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

    def __init__(self, bind: str, port: int, state: Callable[[], dict]):
        self.state = state
        self.page, self.csp = load_page()
        self.loopback_only = is_loopback(bind)
        super().__init__((bind, port), _Handler)
        self._thread: threading.Thread | None = None

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
