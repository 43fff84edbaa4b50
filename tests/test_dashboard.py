"""``fedmekt dashboard``: /api/state from a real broker, and the page in real headless Chromium.

The state test publishes hand-made messages (good, malformed and hostile) through mosquitto and
reads what the dashboard serves; the browser test runs ``fedmekt simulate`` through mosquitto and
checks the rendered DOM shows its clients and a finished round.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fedmekt.observe.dashboard.live import LiveView
from fedmekt.observe.dashboard.server import DashboardServer
from fedmekt.transport.mqtt import LinkOptions
from fedmekt.wire import manifest as fedwire
from core_support import tiny_config, tiny_split
from federation_harness import _cmd

pytestmark = pytest.mark.broker
FED = "dash"


def _chromium() -> str:
    """Debian's chromium; installed with apt when missing and we may (CI runs as root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, capture_output=True, timeout=900).returncode != 0:  # no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
            subprocess.run(install, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing and could not be installed (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


def _get(url: str, host: str | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.read(), dict(res.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _poll(fetch, ok, timeout: float, what: str):
    """``fetch()`` until ``ok(value)``; the last value on failure (the machine may be loaded: no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s; last: {json.dumps(value)[:2000]}"
        time.sleep(0.2)


def _publisher(port: int) -> tuple[mqtt.Client, list[str]]:
    """A plain client that publishes the test's messages and records every topic it sees on the broker."""
    seen: list[str] = []
    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dash-test")
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("#", qos=1)
    c.on_subscribe = lambda cl, u, mid, rcs, p: subscribed.set()
    c.on_message = lambda cl, u, msg: seen.append(msg.topic)
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert subscribed.wait(10)
    return c, seen


def test_api_state_shows_validated_broker_messages(mosquitto):
    pub, seen = _publisher(mosquitto.port)
    base = f"fedmekt/{FED}"
    published = []

    def send(topic: str, payload: bytes, retain: bool = False) -> None:
        published.append(topic)
        pub.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    send(f"{base}/clients/c000/status", fedwire.Status("online", ("acce",)).to_bytes(), retain=True)
    manifest = fedwire.build(tiny_config(federation=FED), tiny_split(), run="e4-0a1b2c3d", name="lab")[0]
    send(f"{base}/proxy/manifest", manifest.to_bytes(), retain=True)   # the run, named as `fedmekt runs` names it
    live = LiveView(mosquitto.url, LinkOptions(client_id="dash-view"), FED).start()
    server = DashboardServer("127.0.0.1", 0, live.state).serve_in_thread()
    try:
        send(f"{base}/clients/c001/status", fedwire.Status("online", ("acce", "gyro")).to_bytes())
        send(f"{base}/clients/<img src=x onerror=alert(1)>/status", fedwire.Status("online").to_bytes())
        send(f"{base}/clients/c002/status", b'{"state": "<b>pwned</b>"}')
        send(f"{base}/rounds", fedwire.Announcement(FED, {"round": 1, "selected": ["c000", "c001", "<x>"]},
                                                    60.0, run="r", nonce="ab").to_bytes(), retain=True)
        send(f"{base}/clients/c001/upload/1/0", b"\0" * 2048)
        send(f"{base}/clients/c001/upload/1/1", b"\0" * 1024)
        send(f"{base}/metrics", b'{"run": "r", "round": 0, "bytes_up": 3072, "f1_paper_acce": 0.5, '
                                b'"f1_paper_gyro": NaN, "absorbed": "all"}', retain=True)
        send(f"{base}/metrics", b'["not", "a", "row"]')
        url = server.url + "api/state"
        state = _poll(lambda: json.loads(_get(url)[1]),
                      lambda s: len(s["unreadable"]) >= 3 and s["history"] and s["run"], 30,
                      "dashboard saw every message")
    finally:
        server.close()
        live.close()
        pub.loop_stop()
    assert state["federation"] == FED and state["connected"] is True
    assert (state["run"], state["federation_run"]) == ("lab", "e4-0a1b2c3d")
    assert set(state["clients"]) == {"c000", "c001"}          # the hostile id and the bad status are refused
    assert state["clients"]["c001"]["modalities"] == ["acce", "gyro"]
    assert state["clients"]["c000"]["last_seen"] is None      # only its retained status: not seen live
    assert isinstance(state["clients"]["c001"]["last_seen"], float)
    assert state["running"] and state["round_index"] == 1 and state["selected"] == ["c000", "c001"]
    assert state["uploads_seen"] == ["c001"] and state["round_uploads"] == {"c001": 3072}
    assert state["history"] == [{"run": "r", "federation_run": None, "round": 1, "selected": None,
                                 "absorbed": None,      # a count that is not a number is dropped
                                 "bytes_up": 3072, "bytes_down": None, "f1": {"acce": 0.5}}]   # NaN dropped
    assert state["last_metrics"] == state["history"][-1]
    assert len(state["unreadable"]) == 3 and any("wire id" in u for u in state["unreadable"])
    assert set(seen) <= set(published)                         # the dashboard published nothing


def test_two_runs_of_one_folder_name_are_two_curves_numbered_as_the_last_round(mosquitto):
    """The aggregator's rows name the run (its folder) and the federation run: two consecutive runs of one setup
    used to share a name and were drawn as one curve, and ``last_metrics`` counted rounds from 0 where the curve
    counted from 1 (issue 23 #11)."""
    pub, _ = _publisher(mosquitto.port)
    live = LiveView(mosquitto.url, LinkOptions(client_id="dash-view"), FED).start()
    try:
        def send(run: str, fed_run: str, rnd: int) -> None:
            row = {"run": run, "federation_run": fed_run, "round": rnd, "f1_paper_acce": 0.1 * rnd}
            pub.publish(f"fedmekt/{FED}/metrics", json.dumps(row), qos=1, retain=True).wait_for_publish(10)

        for rnd in range(3):
            send("lab", "e1-0a0b0c0d", rnd)
        _poll(live.state, lambda s: len(s["history"]) == 3, 30, "the first run's three rounds")
        send("lab", "e2-1a1b1c1d", 0)   # a fresh run in a folder of the same name (the first one removed)
        state = _poll(live.state, lambda s: (s["last_metrics"] or {}).get("federation_run") == "e2-1a1b1c1d", 30,
                      "the second run's first round")
    finally:
        live.close()
        pub.loop_stop()
    assert [p["round"] for p in state["history"]] == [1]
    assert state["last_metrics"] == state["history"][-1] and state["last_metrics"]["round"] == 1


def test_page_headers_and_host_check(mosquitto):
    live = LiveView(mosquitto.url, LinkOptions(client_id="dash-view"), FED).start()
    server = DashboardServer("127.0.0.1", 0, live.state).serve_in_thread()
    try:
        code, page, headers = _get(server.url)
        rebound = _get(server.url + "api/state", host="attacker.example:8765")[0]
        missing = _get(server.url + "etc/passwd")[0]
    finally:
        server.close()
        live.close()
    assert code == 200 and b"/api/state" in page
    assert b"innerHTML" not in page and b"http://" not in page.replace(b"http://www.w3.org/2000/svg", b"")  # no CDN
    assert "script-src 'sha256-" in headers["Content-Security-Policy"] and "connect-src 'self'" in \
        headers["Content-Security-Policy"]
    assert rebound == 421 and missing == 404


def test_dashboard_cli_refuses_bad_options(mosquitto):
    done = subprocess.run(_cmd() + ["dashboard", "--broker", mosquitto.url, "--federation", "a/b"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: --federation 'a/b'" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(_cmd() + ["dashboard", "--broker", "htp://x", "--http-port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "broker URL" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = subprocess.run(_cmd() + ["dashboard", "--broker", mosquitto.url, "--http-port",
                                        str(busy.getsockname()[1])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: cannot serve on 127.0.0.1:" in done.stderr, done.stderr


@pytest.mark.slow
def test_dashboard_in_chromium_shows_the_running_federation(mosquitto, tmp_path: Path):
    chromium = _chromium()
    dash = subprocess.Popen(_cmd() + ["dashboard", "--broker", mosquitto.url, "--federation", FED, "--http-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sim = None
    try:
        line = dash.stdout.readline()
        match = re.search(r" on (http://127\.0\.0\.1:\d+/) ", line)
        assert match, f"no URL in {line!r}; {dash.stderr.read()[-2000:] if dash.poll() is not None else ''}"
        url = match.group(1)
        sim = subprocess.Popen(_cmd() + ["simulate", "--broker", mosquitto.url, "--federation", FED, "--rounds", "3",
                                         "--clients", "1,1,1", "--per-round", "3", "--proxy-windows", "8",
                                         "--out", str(tmp_path / "sim"), "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        _poll(lambda: json.loads(_get(url + "api/state")[1]),
              lambda s: s["history"] and len(s["clients"]) == 3 or sim.poll() is not None, 300,
              "a finished round and three clients")
        assert sim.poll() in (None, 0), sim.stderr.read()[-2000:]
        dom = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000",
                              "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    finally:
        for proc in (sim, dash):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    for cid in ("c000", "c001", "c002"):
        assert f"<td>{cid}</td>" in dom, dom[-3000:]
    shown = re.search(r'id="round">(\d+)<', dom)
    assert shown and int(shown.group(1)) >= 1, dom[-3000:]
    assert f'id="federation">{FED}<' in dom and "<polyline" in dom   # the F1 curve is drawn
    assert re.search(r'id="run">run sim \(federation run e\d+-[0-9a-f]{8}\)<', dom), dom[-3000:]


def test_half_open_requests_are_cut_and_bounded(mosquitto):
    """300 sockets that send half a request: at most max_connections served at once, all closed by the deadline."""
    live = LiveView(mosquitto.url, LinkOptions(client_id="dash-view"), FED).start()
    server = DashboardServer("127.0.0.1", 0, live.state, request_timeout=2.0, max_connections=16).serve_in_thread()
    threads_before = threading.active_count()
    socks: list[socket.socket] = []
    peak_threads = 0
    try:
        for _ in range(300):
            s = socket.create_connection(server.server_address[:2], timeout=30)
            s.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # never the blank line that ends it
            socks.append(s)
            peak_threads = max(peak_threads, threading.active_count())
        opened = time.monotonic()
        for s in socks:                           # the server closes each: EOF (or a reset), within the deadline
            try:
                assert s.recv(1) == b"", "the server answered a request that never ended"
            except ConnectionResetError:
                pass
        closed_after = time.monotonic() - opened
        code, body, _ = _get(server.url + "api/state")
    finally:
        for s in socks:
            s.close()
        server.close()
        live.close()
    assert peak_threads <= threads_before + 16, f"{peak_threads} threads for 300 half-open sockets"
    assert closed_after < 2.0 + 10, f"half-open sockets held {closed_after:.1f} s after the last opened (timeout 2 s)"
    assert code == 200 and json.loads(body)["federation"] == FED
