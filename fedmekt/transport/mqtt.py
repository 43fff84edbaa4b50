"""One MQTT connection as the federation uses it (paho-mqtt 2.x, VERSION2 callbacks).

:class:`MqttLink` adds what every party needs on top of paho:

* MQTT v5 first, falling back to 3.1.1 when the broker answers "Unsupported protocol
  version" (amqtt speaks only 3.1.1); v5 extras (session expiry, message expiry) are
  used only when negotiated, everything else works on both.
* presence: a retained ``online`` birth message published on every (re)connect, once its
  subscriptions are acknowledged (``connect`` returns then too), and a retained ``offline``
  Last Will carried by every CONNECT packet;
* persistent sessions (v5 session expiry / 3.1.1 ``clean_session=False``) and
  subscriptions renewed on every reconnect; reconnect with exponential backoff;
* QoS 1 everywhere; bounded outgoing queue and an inbox bounded in messages and bytes. Flow control never
  blocks paho's network thread (keepalive pings must go on while the application is busy): a message is
  acknowledged when the application takes it (paho's manual ack), and the MQTT 5 Receive Maximum asks the
  broker to keep its unacknowledged window within the inbox and hold the rest. What still overflows the inbox
  (QoS 0, a 3.1.1 broker's wider window, mosquitto 2.0.11 sending a whole window more after a PUBACK while it
  holds queued messages: measured) is dropped, counted (``dropped``) and logged;
* ``live`` subscriptions take no retained messages (MQTT 5 retain handling "do not send", and, for a 3.1.1
  broker, retained copies are discarded on arrival): a device login parking retained messages on its data
  topics cannot flood a subscriber that starts later;
* a session taken over by a second connection with the same login (the broker forces
  client id = username) ends the link with an error instead of reconnecting, which would
  kick the other session in turn, and so on. Seen as MQTT 5 reason 142 where the broker
  sends it, and, with ``session_topic``, as another session's token: each link publishes
  a random token there (retained) until it has seen it come back, and subscribes; a
  different token arriving after its own (live, or retained on a reconnect) is a newer
  session of the same login. Tokens before its own are stale (a resumed session's queue).
  A session that publishes no token (a foreign tool on our password) is caught by ``kick_limit``:
  that many established connections lost within a minute (a broker restart costs one).
  Gateways (``takeover="alert"``) do not obey a takeover: anyone holding a stolen device login could
  otherwise switch the device off for good by publishing one token. They log an alert, publish a fresh
  token and carry on (reconnecting after a kick as after any lost connection);
* TLS failures (unknown CA, host-name mismatch, plain-TCP port) reported as such;
* failover: a comma-separated list of broker URLs (nodes of one cluster, or brokers that
  share the federation's topics) is tried in order, on the first connect and after every
  lost connection or failed attempt the link moves on to the next, wrapping around;
* refused subscriptions retried with backoff (a cluster re-electing leaders refuses them for a while);
* brokers with retained messages off: an MQTT 5 broker says so in its CONNACK ("Retain Available" 0, or
  reason 154 "Retain not supported" for a retained Will, then the connect is repeated without it), a
  3.1.1 one cannot (``LinkOptions.retain = False``); from then on nothing is published with the retain
  flag, which such a broker punishes by dropping the connection. The protocol does not need retained
  messages (clients ask the aggregator with a sync request, fedmekt/wire/sync.py).
"""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from fedmekt.errors import UserError
from sensors.inbox import Inbox

log = logging.getLogger(__name__)
V5_PROBE_S = 3.0
KICK_WINDOW_S = 60.0  # kick_limit counts the established connections lost within this window
TAKEOVER_ALERT_EVERY_S = 60.0  # a gateway under a ping-pong of takeovers logs one alert line per minute
SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason code
RETAIN_NOT_SUPPORTED = 154  # MQTT 5 CONNACK / DISCONNECT reason code
# A refused subscription is retried with backoff: reconnect_min doubling, capped at SUBSCRIBE_RETRY_MAX_S (about
# 2 min in all). A cluster's leaders are back within seconds; a link waiting 16-60 s for its next SUBSCRIBE hears
# nothing meanwhile (seen: a late joiner that missed a retained plan for 30 s).
SUBSCRIBE_RETRIES = 30
SUBSCRIBE_RETRY_MAX_S = 4.0
# The protocol's largest message (fedmekt.conf's message_size_limit): the MQTT 5 Receive Maximum is the inbox's
# byte budget in messages this large, so whatever the broker may have in flight fits the inbox.
LARGEST_MESSAGE = 260 * 1024
RECEIVE_MAXIMUM_CAP = 65535  # the protocol's limit
REFUSED_FOR_S = 1.0  # every broker refusing TCP this long ends connect(): nothing listens, retrying is pointless
_V311_ONLY: set[tuple[str, int]] = set()  # brokers that failed the v5 probe in this process: skip it next time


@dataclass(frozen=True)
class BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` (TLS, default port 8883)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "BrokerAddress":
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise UserError(f"broker URL must look like mqtt://host:port or mqtts://host:port, got {url!r}")
        try:
            port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        except ValueError:
            raise UserError(f"bad port in broker URL {url!r}") from None
        return cls(host=u.hostname, port=port, tls=u.scheme == "mqtts",
                   username=unquote(u.username) if u.username else None,
                   password=unquote(u.password) if u.password else None)

    @classmethod
    def parse_list(cls, urls: str | Sequence[str]) -> "tuple[BrokerAddress, ...]":
        """``URL[,URL…]`` (or a list of URLs) in failover order; each one parsed as strictly as one URL."""
        parts = urls.split(",") if isinstance(urls, str) else list(urls)
        if not parts or any(not part.strip() for part in parts):
            raise UserError(f"broker URLs must be comma-separated mqtt://host:port entries, got {urls!r}")
        return tuple(cls.parse(part.strip()) for part in parts)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _where(addresses: Sequence[BrokerAddress]) -> str:
    return ", ".join(str(a) for a in addresses)


def _all_refuse(addresses: Sequence[BrokerAddress]) -> bool:
    """Whether every broker's port actively refuses TCP (ECONNREFUSED: nothing listens), as opposed to not
    answering (a firewall, a host that is down or far away), which is worth waiting for."""
    for address in addresses:
        try:
            with socket.create_connection((address.host, address.port), timeout=1.0):
                return False
        except ConnectionRefusedError:
            continue
        except OSError:
            return False
    return True


def refused_message(addresses: Sequence[BrokerAddress]) -> str:
    return (f"cannot reach MQTT broker at {_where(addresses)}: connection refused (nothing listens there: is the "
            f"broker running, and is the port right?)")


def check_reachable(urls: str | Sequence[str]) -> None:
    """Refuse at once a broker whose every address refuses TCP for REFUSED_FOR_S (nothing listens), before long
    work that would need it (a gateway filling its store first). Only a cheap TCP check: a broker that does not
    answer at all is left to the link's connect, which waits for it."""
    addresses = BrokerAddress.parse_list(urls)
    deadline = time.monotonic() + REFUSED_FOR_S
    while _all_refuse(addresses):
        if time.monotonic() >= deadline:
            raise UserError(refused_message(addresses))
        time.sleep(0.1)  # a broker starting up opens its port within moments


@dataclass
class LinkOptions:
    """Connection settings; the defaults suit a gateway on a flaky link."""

    client_id: str
    username: str | None = None  # overrides the URL's user; by convention equals the client id
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip TLS host-name verification (test rigs only)
    protocol: str = "auto"  # "auto" (v5, else 3.1.1) | "5" | "3.1.1"
    keepalive: int = 30
    session_expiry: int = 3600  # seconds the broker keeps our session (and queued QoS 1 messages) while away
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    max_queued: int = 1000  # outgoing messages paho may hold
    inbox: int = 2000  # incoming messages waiting for the application
    inbox_bytes: int = 64 * 2**20  # and their payload bytes (the MQTT 5 Receive Maximum follows from both)
    session_topic: str | None = None  # retained token topic that detects a second session of this login
    retain: bool = True  # False: the broker has retained messages off (MQTT 5 brokers also say so themselves)
    kick_limit: int = 0  # > 0: that many established connections lost within KICK_WINDOW_S are a takeover by a
    # session that publishes no token (each of its reconnects kicks us); 0: keep reconnecting (gateways' flaky links)
    takeover: str = "stop"  # a second session of this login: "stop" ends the link with an error (aggregator,
    # tools: two of them on one login is a mistake to fix); "alert" logs it and reclaims the session (gateways)


@dataclass(frozen=True)
class Presence:
    """Birth message (retained, published on every connect) and Last Will (retained)."""

    topic: str
    online: bytes
    offline: bytes


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    received: float = 0.0  # time.monotonic() when it arrived (a busy reader handles it later)
    expiry: int | None = None  # MQTT 5: seconds left of its message expiry when it arrived (None: none, or 3.1.1)


class _Acks:
    """PUBACKs by packet id, from paho's public ``on_publish`` callback. paho's ``wait_for_publish`` raises for a
    message queued while disconnected although paho sends it after reconnecting; these waits hold for it alike.

    The PUBACK may come before ``sent`` registers the id (the network thread is quick): it is kept as early.
    Every publication of the link is registered, so an early ack always finds its registration.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[int] = set()  # registered, not acknowledged yet
        self._early: set[int] = set()  # acknowledged before it was registered
        self._done: set[int] = set()  # registered and acknowledged (until the id is reused)

    def sent(self, mid: int) -> None:
        with self._cond:
            if mid in self._early:
                self._early.discard(mid)
                self._done.add(mid)
                self._cond.notify_all()
            else:
                self._done.discard(mid)  # an older publication's ack with this (reused) id
                self._pending.add(mid)

    def acked(self, mid: int) -> None:
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
                self._done.add(mid)
                self._cond.notify_all()
            else:
                self._early.add(mid)

    def wait(self, mid: int, timeout: float) -> bool:
        """Whether the publication with packet id ``mid`` is acknowledged, waiting up to ``timeout`` s for it."""
        with self._cond:
            return self._cond.wait_for(lambda: mid in self._done, max(0.0, timeout))

    def reset(self) -> None:
        """A new paho client numbers its packets afresh."""
        with self._cond:
            self._pending.clear()
            self._early.clear()
            self._done.clear()


@dataclass(frozen=True)
class _Received:
    """An inbox entry: the message and what acknowledging it needs (the connection it came on)."""

    message: Message
    client: paho.Client
    generation: int
    mid: int
    qos: int


class MqttLink:
    """A connected, self-healing MQTT client. Use as a context manager or call ``close``."""

    def __init__(self, url: str | Sequence[str], options: LinkOptions, presence: Presence | None = None,
                 subscriptions: Sequence[str] = (), live: Sequence[str] = ()):
        """``live``: those of ``subscriptions`` that take no retained messages (data topics that anyone with a
        device login may publish to: a retained copy there is stale at best, a flood at worst)."""
        self.addresses = BrokerAddress.parse_list(url)
        self._current = 0  # index into addresses: where the next (re)connect goes
        self._failed_at: BrokerAddress | None = None  # the address of the last failed TCP/TLS attempt
        self.options = options
        self.presence = presence
        self._subs: list[str] = list(dict.fromkeys([*subscriptions, *live]))
        self._live = frozenset(live)
        self._inbox: Inbox[_Received] = Inbox(options.inbox, options.inbox_bytes, log)  # drops: counted, logged
        self._acks = _Acks()
        self._generation = 0  # counts connections: an ack goes only over the connection its message came on
        self.retained_refused = 0  # retained copies that arrived on a live subscription anyway (a 3.1.1 broker)
        self._connect_props: Properties | None = None
        self._clean_start: bool | int = False
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._unsupported = False
        self._connect_failed = threading.Event()  # a TCP/TLS attempt failed before any CONNACK
        self._taken_over = False
        self.takeovers = 0  # second sessions of this login seen (with takeover="alert": survived)
        self._alerted_at = -TAKEOVER_ALERT_EVERY_S
        self._drops: deque[float] = deque()  # when established connections were lost (kick_limit)
        self._token = secrets.token_hex(16).encode()
        self._seen_token = False  # our own token came back: any other one after it is a newer session
        self._connack: paho.ReasonCode | None = None
        self._sub_lock = threading.Lock()
        self._sub_mids: dict[int, tuple[str, int, bool]] = {}  # SUBSCRIBE packet id -> (topic, attempt, initial)
        self._awaiting: set[str] = set()  # this connect's subscriptions not yet acknowledged
        self._born = False  # birth published (and _subscribed set) for this connect
        self.births = 0  # connects whose subscriptions were answered (each one a chance to have missed messages)
        self._retain_ok = options.retain  # the broker keeps retained messages (CONNACK may say otherwise)
        self._retain_refused = False  # the broker refused our retained Will: connect again without it
        self._subscribed = threading.Event()
        self.protocol = ""
        self.connects = 0
        self._client: paho.Client | None = None

    @property
    def address(self) -> BrokerAddress:
        """The broker this link is connected (or connecting) to."""
        return self.addresses[self._current]

    def _fail_over(self, client: paho.Client) -> None:
        """Point the next reconnect at the next address. paho's ``host``/``port`` setters refuse while a lost
        connection is being torn down; ``connect_async`` (public) resets the connection state and takes the
        new address, and paho's reconnect loop uses it on its next attempt."""
        if len(self.addresses) > 1 and not self._closing.is_set():
            self._current = (self._current + 1) % len(self.addresses)
            client.connect_async(self.address.host, self.address.port, keepalive=self.options.keepalive,
                                 clean_start=self._clean_start, properties=self._connect_props)
            log.info("failing over to broker %s", self.address)

    def _on_connect_fail(self, client, userdata) -> None:
        self._failed_at = self.address
        self._connect_failed.set()
        self._fail_over(client)

    # -- connection -------------------------------------------------------------------------
    def connect(self, timeout: float = 15.0) -> "MqttLink":
        """Connect (v5 first when ``protocol`` is auto) and wait for the first CONNACK."""
        order = {"auto": ("5", "3.1.1"), "5": ("5",), "3.1.1": ("3.1.1",)}.get(self.options.protocol)
        if order is None:
            raise UserError(f"MQTT protocol must be auto, 5 or 3.1.1, got {self.options.protocol!r}")
        where = (self.address.host, self.address.port)  # a failover list: the first broker's answer stands for all
        if self.options.protocol == "auto" and where in _V311_ONLY:
            order = ("3.1.1",)
        for proto in order:
            self._start(proto)
            # amqtt neither answers nor closes a v5 CONNECT that carries properties, so the v5
            # probe in auto mode gets a short wait before falling back to 3.1.1.
            probe = len(order) > 1 and proto == "5"
            deadline = time.monotonic() + (min(timeout, V5_PROBE_S) if probe else timeout)
            refused_since: float | None = None  # every broker has refused TCP since then
            while time.monotonic() < deadline and not self._connected.is_set() and not self._unsupported \
                    and not self._refused():
                if self._retain_refused:  # an MQTT 5 broker without retained messages: same protocol, plain Will
                    self._stop_client()
                    self._start(proto)
                self._connected.wait(0.05)
                if self._connect_failed.is_set() or refused_since is not None:
                    failed = self._connect_failed.is_set()
                    self._connect_failed.clear()
                    problem = self._tls_problem(self._failed_at or self.address) if failed and self.address.tls \
                        else None
                    if problem:
                        self._stop_client()
                        raise UserError(problem)
                    if not _all_refuse(self.addresses):
                        refused_since = None  # a broker starting up opened its port: paho's next attempt gets in
                    elif refused_since is None:
                        refused_since = time.monotonic()
                    elif time.monotonic() - refused_since >= REFUSED_FOR_S:
                        self._stop_client(join=False)
                        raise UserError(refused_message(self.addresses))
            if self._connected.is_set():
                if self.protocol == "3.1.1" and len(order) > 1:
                    _V311_ONLY.add(where)
                if not self._subscribed.wait(max(0.0, deadline - time.monotonic())):
                    log.warning("broker %s has not acknowledged every subscription yet", self.address)
                return self
            self._stop_client()
            problem = self._tls_problem(self.address) if self.address.tls and not self._refused() else None
            if problem:
                raise UserError(problem)
            if self._refused():
                raise UserError(f"broker {self._failed_at or self.address} refused the connection: {self._connack}")
            if not (probe or self._unsupported):
                break
        raise UserError(f"cannot reach MQTT broker at {_where(self.addresses)} within {timeout:.0f} s: waited for a "
                        f"TCP connection and the broker's CONNACK (a firewall dropping packets, a wrong host, or a "
                        f"broker too busy to answer)")

    def _tls_problem(self, address: BrokerAddress) -> str | None:
        """Repeat the TLS handshake to say why it failed; paho reports only that the connection did.

        None when the handshake succeeds or the host cannot be reached at all (not a TLS problem).
        """
        o, host, port = self.options, address.host, address.port
        try:
            ctx = ssl.create_default_context(cafile=o.ca_file)
            if o.cert_file:
                ctx.load_cert_chain(o.cert_file, o.key_file)
        except (OSError, ssl.SSLError) as exc:
            return f"cannot use the TLS files (--ca-file/--cert-file/--key-file): {exc}"
        ctx.check_hostname = not o.insecure
        where = f"broker {host}:{port}"
        plain = " (a plain-TCP listener? use mqtt://)"
        try:
            raw = socket.create_connection((host, port), timeout=5)
        except OSError:
            return None
        try:
            with raw, ctx.wrap_socket(raw, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            why = exc.verify_message or str(exc)
            if "mismatch" in why.lower():
                return (f"TLS: the certificate of {where} is not valid for the name {host!r} ({why}); connect "
                        f"with a name or address it was issued for (fedmekt provision init --host)")
            return (f"TLS: the certificate of {where} is not signed by a trusted CA ({why}); "
                    f"pass the CA that signed it with --ca-file")
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            hint = plain if isinstance(exc, ssl.SSLEOFError) or "WRONG_VERSION_NUMBER" in str(reason) else ""
            return f"TLS handshake with {where} failed: {reason}{hint}"
        except OSError as exc:  # reset or closed mid-handshake: the other end does not speak TLS
            return f"TLS handshake with {where} failed: {exc.strerror or exc}{plain}"

    def _refused(self) -> bool:
        """Bad credentials or not authorised: retrying with backoff would only hammer the broker."""
        rc = self._connack
        return rc is not None and not self._unsupported and rc.value in (4, 5, 134, 135, 138, 140)

    def _start(self, proto: str) -> None:
        o = self.options
        self.protocol = proto
        self._unsupported = False
        self._connect_failed.clear()
        self._connack = None
        self._retain_refused = False
        v5 = proto == "5"
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=o.client_id,
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                        clean_session=None if v5 else False, manual_ack=True)  # acked when the application takes it
        self._acks.reset()
        c.max_queued_messages_set(o.max_queued)
        c.reconnect_delay_set(min_delay=max(1, int(o.reconnect_min)), max_delay=max(1, int(o.reconnect_max)))
        user = o.username or self.address.username
        if user:
            c.username_pw_set(user, o.password or self.address.password)
        if self.address.tls:
            c.tls_set(ca_certs=o.ca_file, certfile=o.cert_file, keyfile=o.key_file,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            c.tls_insecure_set(o.insecure)
        if self.presence:
            c.will_set(self.presence.topic, self.presence.offline, qos=1, retain=self._retain_ok)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = o.session_expiry
            props.ReceiveMaximum = self.receive_maximum
        self._connect_props = props
        self._clean_start = False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
        try:
            c.connect_async(self.address.host, self.address.port, keepalive=o.keepalive,
                            clean_start=self._clean_start, properties=props)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot connect to {self.address.host}:{self.address.port}: {exc}") from None
        self._client = c
        c.loop_start()

    def _stop_client(self, join: bool = True) -> None:
        """``join=False``: do not wait for paho's thread, which may sleep up to 1 s between reconnect attempts;
        disconnect() alone makes it end there."""
        if self._client is not None:
            self._client.disconnect()
            if join:
                self._client.loop_stop()
            self._client = None

    @property
    def receive_maximum(self) -> int:
        """The MQTT 5 window of unacknowledged messages the broker may send: what the inbox holds of the
        protocol's largest messages, so an inbox nobody reads fills and the broker waits (and keeps the rest;
        mosquitto 2.0.11 does not always: see the module docstring)."""
        o = self.options
        return max(1, min(o.inbox, o.inbox_bytes // LARGEST_MESSAGE, RECEIVE_MAXIMUM_CAP))

    def _send(self, client: paho.Client, topic: str, payload: bytes, retain: bool,
              properties: Properties | None = None) -> paho.MQTTMessageInfo:
        """Every QoS 1 publication goes through here, so its PUBACK can be waited for (``_Acks``)."""
        info = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
            self._acks.sent(info.mid)
        return info

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if client is self._client:
            self._acks.acked(mid)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = reason_code
        if reason_code.value == RETAIN_NOT_SUPPORTED and self._retain_ok:
            log.info("broker %s has retained messages off; publishing without the retain flag", self.address)
            self._retain_ok, self._retain_refused = False, True
            return
        if reason_code == "Unsupported protocol version" or (self.protocol == "3.1.1" and reason_code.value == 1):
            self._unsupported = True
            return
        if reason_code.is_failure:
            self._failed_at = self.address
            log.warning("broker %s refused connection: %s", self.address, reason_code)
            return
        if self._retain_ok and getattr(properties, "RetainAvailable", 1) == 0:
            log.info("broker %s has retained messages off; publishing without the retain flag", self.address)
            self._retain_ok = False
        session = self.options.session_topic
        if session:
            if not self._seen_token:  # after that, the retained token says whether another session came
                self._send(client, session, self._token, self._retain_ok)
            self._subscribe(client, session)
        self.connects += 1
        self._generation += 1
        with self._sub_lock:
            self._awaiting.clear()
            self._born = False
        self._subscribed.clear()
        for topic in self._subs:
            self._subscribe(client, topic, initial=True)
        self._after_subacks(client)
        log.debug("connected (MQTT %s, session present=%s)", self.protocol, flags.session_present)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        established = self._connected.is_set()
        self._connected.clear()
        if self.protocol == "5" and reason_code == SESSION_TAKEN_OVER and not self._closing.is_set() \
                and self._lose_session(client):
            return
        if established and self._kicked_repeatedly() and self._lose_session(client):
            return
        if self.protocol == "5" and self.connects == 0 and not self._closing.is_set() and not self._retain_refused:
            self._unsupported = True  # closed before any CONNACK: a 3.1.1-only broker (amqtt) does this
        if not self._closing.is_set() and not self._unsupported and not self._taken_over and not self._retain_refused:
            log.warning("disconnected from broker %s (%s); reconnecting with backoff", self.address, reason_code)
            self._fail_over(client)

    def _subscribe(self, client: paho.Client, topic: str, attempt: int = 0, initial: bool = False) -> None:
        with self._sub_lock:  # held across the call: the SUBACK may arrive before subscribe() returns
            if topic in self._live and self.v5:  # the broker sends no retained copies (3.1.1: see _on_message)
                live = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
                rc, mid = client.subscribe(topic, options=live)
            else:
                rc, mid = client.subscribe(topic, qos=1)
            if rc == paho.MQTT_ERR_SUCCESS:
                self._sub_mids[mid] = (topic, attempt, initial)
                if initial:
                    self._awaiting.add(topic)

    def _after_subacks(self, client: paho.Client) -> None:
        """Once the connect's subscriptions are answered (SUBACK, granted or refused), announce the birth: who
        acts on our presence (the aggregator selecting us) must find us listening. A clustered broker
        acknowledges late while it creates its consumers; mosquitto at once."""
        with self._sub_lock:
            if self._awaiting or self._born:
                return
            self._born = True
        if self.presence:
            self._send(client, self.presence.topic, self.presence.online, self._retain_ok)
        self.births += 1
        self._subscribed.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """A refused subscription is retried: a clustered broker (NATS) refuses them for the seconds it takes
        to re-elect leaders after losing a node, and a link that missed that would silently hear nothing.
        "Not authorised" (v5 reason 135, an ACL) is final."""
        with self._sub_lock:
            topic, attempt, initial = self._sub_mids.pop(mid, (None, 0, False))
        failed = [rc for rc in reason_codes if rc.is_failure]
        if topic is None or self._closing.is_set():
            return
        if initial:  # answered, either way: a refused one goes on being retried below, without holding the birth
            with self._sub_lock:
                self._awaiting.discard(topic)
            self._after_subacks(client)
        if not failed:
            return
        if any(rc.value == 135 for rc in failed) or attempt >= SUBSCRIBE_RETRIES:
            log.error("broker %s refused the subscription to %s: %s", self.address, topic, failed[0])
            return
        log.warning("broker %s refused the subscription to %s (%s); retrying", self.address, topic, failed[0])

        def retry() -> None:
            if self.connected and self._client is client and not self._closing.is_set():
                self._subscribe(client, topic, attempt + 1)

        delay = min(self.options.reconnect_max, SUBSCRIBE_RETRY_MAX_S, self.options.reconnect_min * 2 ** attempt)
        timer = threading.Timer(delay, retry)
        timer.daemon = True
        timer.start()

    def _on_message(self, client, userdata, msg: paho.MQTTMessage) -> None:
        """Runs on paho's network thread, which must never wait: it also sends the keepalive pings."""
        if msg.topic == self.options.session_topic:
            client.ack(msg.mid, msg.qos)
            if bytes(msg.payload) == self._token:
                self._seen_token = True
            elif msg.payload and self._seen_token:
                self._lose_session(client)
            return
        if msg.retain and any(paho.topic_matches_sub(live, msg.topic) for live in self._live):
            client.ack(msg.mid, msg.qos)  # a broker without retain handling (3.1.1) sent a retained copy anyway
            self.retained_refused += 1
            return
        expiry = getattr(msg.properties, "MessageExpiryInterval", None) if msg.properties is not None else None
        item = Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic(), expiry)
        if not self._inbox.offer(_Received(item, client, self._generation, msg.mid, msg.qos), len(item.payload),
                                 msg.topic):
            client.ack(msg.mid, msg.qos)  # dropped (counted and logged by the inbox)

    def _kicked_repeatedly(self) -> bool:
        """A broker that restarts drops us once; a second session of our login that publishes no token
        (a foreign tool) takes the session over again at each of our reconnects."""
        if self.options.kick_limit <= 0 or self._closing.is_set():
            return False
        now = time.monotonic()
        self._drops.append(now)
        while self._drops and now - self._drops[0] > KICK_WINDOW_S:
            self._drops.popleft()
        return len(self._drops) >= self.options.kick_limit

    def _lose_session(self, client: paho.Client) -> bool:
        """Another session of our login: end the link (True), or, with ``takeover="alert"``, alert and go on."""
        self.takeovers += 1
        if self.options.takeover == "alert":
            now = time.monotonic()
            if now - self._alerted_at >= TAKEOVER_ALERT_EVERY_S:
                self._alerted_at = now
                user = self.options.username or self.address.username or self.options.client_id
                log.error("ALERT: another connection logged in as %r took over this session (%d time(s) so far); "
                          "carrying on. If this device runs only once, its password is known to someone else: "
                          "re-key it (fedmekt provision add) and reload the broker", user, self.takeovers)
            self._token, self._seen_token = secrets.token_hex(16).encode(), False  # reclaim: ours is the newest
            if self.connected and self.options.session_topic:
                self._send(client, self.options.session_topic, self._token, self._retain_ok)
            return False
        if not self._taken_over:
            self._taken_over = True
            log.error("%s", self._taken_over_message())
        client.disconnect()  # and stop the reconnect loop: reconnecting would kick the other session
        return True

    def _taken_over_message(self) -> str:
        user = self.options.username or self.address.username or self.options.client_id
        return (f"another connection logged in as {user!r} took over this session (MQTT 'Session taken over'); "
                f"each running tool needs its own login (fedmekt provision add)")

    def _check_session(self) -> None:
        if self._taken_over:
            raise UserError(self._taken_over_message())

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    @property
    def retain_available(self) -> bool:
        """Whether retained messages reach later subscribers (False: every publication goes without the flag)."""
        return self._retain_ok

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    # -- traffic ----------------------------------------------------------------------------
    def resubscribe(self) -> None:
        """Subscribe afresh to every topic (unsubscribe, subscribe): a cluster node can acknowledge a
        subscription and then deliver nothing on it (NATS 2.9 under load); a new one is created anew."""
        client = self._client
        if client is None or not self.connected:
            return
        for topic in self._subs:
            client.unsubscribe(topic)
            self._subscribe(client, topic)

    def subscribe(self, topic: str) -> None:
        """Subscribe now and after every reconnect (QoS 1)."""
        if topic not in self._subs:
            self._subs.append(topic)
            if self._client is not None and self.connected:
                self._subscribe(self._client, topic)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                expiry: int | None = None) -> paho.MQTTMessageInfo:
        """QoS 1 publish; ``expiry`` (seconds) becomes the v5 MessageExpiryInterval, ignored on 3.1.1;
        ``retain`` is dropped on a broker without retained messages."""
        client = self._client
        if client is None:
            raise RuntimeError("MqttLink.publish before connect() (or after close())")
        self._check_session()
        props = None
        if expiry is not None and self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = int(expiry)
        info = self._send(client, topic, payload, retain and self._retain_ok, props)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise UserError(f"outgoing MQTT queue full ({self.options.max_queued} messages)")
        return info

    def publish_all(self, items: Iterable[tuple[str, bytes]], *, retain: bool = False, expiry: int | None = None,
                    timeout: float = 300.0, window: int = 32) -> int:
        """Publish many messages with at most ``window`` unacknowledged; wait for every PUBACK.

        Survives a reconnect in the middle (paho re-sends unacknowledged QoS 1 messages).
        Returns the payload bytes sent.
        """
        pending: deque[paho.MQTTMessageInfo] = deque()
        deadline = time.monotonic() + timeout
        sent = 0
        for topic, payload in items:
            while len(pending) >= window:
                self._wait_one(pending, deadline)
            pending.append(self.publish(topic, payload, retain=retain, expiry=expiry))
            sent += len(payload)
        while pending:
            self._wait_one(pending, deadline)
        return sent

    def _wait_one(self, pending: deque, deadline: float) -> None:
        info = pending[0]
        while not self._acks.wait(info.mid, min(0.1, deadline - time.monotonic())):
            self._check_session()
            if time.monotonic() > deadline or self._closing.is_set():
                raise TimeoutError("MQTT publish not acknowledged in time")
        pending.popleft()

    @property
    def dropped(self) -> int:
        """Messages that found the inbox full (counted, logged, acknowledged, lost)."""
        return self._inbox.dropped

    @property
    def pending(self) -> int:
        """Messages received and not yet taken with ``get``."""
        return len(self._inbox)

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, None after ``timeout``; raises UserError once the session was taken over."""
        self._check_session()
        got = self._inbox.get(timeout=timeout)
        if got is None:
            return None
        if got.qos and got.client is self._client and got.generation == self._generation:
            got.client.ack(got.mid, got.qos)  # opens the broker's window for the next one
        return got.message

    def close(self, announce_offline: bool = True) -> None:
        """Clean disconnect; the Will does not fire on a clean disconnect, so publish offline ourselves."""
        if self._client is None:
            return
        if announce_offline and self.presence and self.connected:
            try:
                self.publish_all([(self.presence.topic, self.presence.offline)], retain=True, timeout=5)
            except TimeoutError:
                log.warning("offline status not acknowledged before disconnect")
        self._closing.set()
        self._stop_client()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash would (the broker sends the Will)."""
        if self._client is None:
            return
        self._closing.set()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._client = None

    def __enter__(self) -> "MqttLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
