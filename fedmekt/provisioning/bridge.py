"""A site broker's bridge to the lab broker (``fedmekt provision bridge``).

Gateways at a site (a hospital ward, a care home) connect to a mosquitto on their own network; that
broker keeps one TLS connection to the lab broker with its own ``bridge`` login and relays exactly what
the lab's ACL gives that login: its devices' topics of one federation. The bridge's topic lines are
derived from the same ACL rules (``acl.rules``), so the two cannot drift apart: a topic the ACL allows a
device is relayed, and a pattern the bridge subscribes to is one the lab lets it read.

Operator folder gains ``sites/<site>/{bridge.conf, lab-ca.crt}``: copy it to the site broker's host
(``--site-dir``, the path the config names) and include ``bridge.conf`` in its mosquitto configuration.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedmekt.errors import UserError
from fedmekt.transport.mqtt import BrokerAddress
from fedmekt.provisioning.acl import Login, bridge_state_topic, rules
from fedmekt.provisioning.registry import CREDENTIALS, Deployment, _write, add, shipped_conf

BRIDGE_CONF, LAB_CA = "bridge.conf", "lab-ca.crt"
# reconnect after a lost link: decorrelated jitter from 1 s up to 5 s, so a lab restart is not met
# by every site at once, and a WAN link back after a short outage is used within seconds
RESTART_TIMEOUT = "1 5"
KEEPALIVE_S = 15  # a link that silently stops carrying packets is noticed within 1.5 x this


def bridge_topics(login: Login) -> list[str]:
    """``topic <pattern> in|out|both 1`` per pattern of the login's ACL: read is in, write is out, both is both.

    The bridge's state topic is left out: mosquitto publishes it itself (``notification_topic``)."""
    access: dict[str, set[str]] = {}
    for rule in rules(login):
        _, kind, pattern = rule.split(" ", 2)
        access.setdefault(pattern, set()).update({"read": {"in"}, "write": {"out"}, "readwrite": {"in", "out"}}[kind])
    state = {bridge_state_topic(fed, login.name) for fed in login.federations}
    return [f"topic {pattern} {'both' if len(dirs) == 2 else next(iter(dirs))} 1"
            for pattern, dirs in access.items() if pattern not in state]


def _max_packet_size() -> int:
    """The lab listener's limit: the bridge drops a larger message rather than being disconnected for it."""
    found = re.search(r"^max_packet_size (\d+)$", shipped_conf(), re.MULTILINE)
    assert found, "the shipped fedmekt.conf sets max_packet_size"
    return int(found.group(1))


def render_bridge(login: Login, lab: tuple[BrokerAddress, ...], password: str, ca_file: Path) -> str:
    """The bridge section of the site broker's mosquitto configuration."""
    fed = login.federations[0]
    return "\n".join([
        f"# fedmekt site broker {login.name}: its bridge to the lab broker, written by `fedmekt provision bridge`;",
        "# re-run that command rather than editing. It relays exactly what the lab's ACL gives the login",
        f"# {login.name}: the topics of devices {', '.join(login.devices)} in federation {fed}.",
        f"connection {login.name}",
        "address " + " ".join(f"{a.host}:{a.port}" for a in lab),  # more than one: failover in order
        f"remote_clientid {login.name}",  # the lab forces client id = username anyway
        f"remote_username {login.name}",
        f"remote_password {password}",
        # TLS to the lab, its certificate checked against the operator's CA and the host name
        f"bridge_cafile {ca_file}",
        "bridge_insecure false",
        "bridge_tls_version tlsv1.2",
        # 3.1.1 with mosquitto's bridge flag: the lab sends nothing back that came from this bridge
        # (no loops on `both` topics) and keeps the retain flag of what it relays
        "bridge_protocol_version mqttv311",
        "try_private true",
        # a persistent session on both ends: QoS 1 messages are queued while the WAN link is down
        "cleansession false",
        f"restart_timeout {RESTART_TIMEOUT}",
        f"keepalive_interval {KEEPALIVE_S}",
        f"bridge_max_packet_size {_max_packet_size()}",
        # retained 1 while the link is up, 0 as its Will (on the lab) when it drops
        "notifications true",
        f"notification_topic {bridge_state_topic(fed, login.name)}",
        *bridge_topics(login),
    ]) + "\n"


def provision_bridge(operator: Path, site: str, federation: str, devices: tuple[str, ...],
                     lab_urls: str | None = None, site_dir: Path | None = None, password: str | None = None) -> Path:
    """Add (or re-key) the site's bridge login and write its ``bridge.conf`` and the lab's CA;
    returns the folder to copy to the site broker. ``lab_urls`` default to the lab's provisioned address."""
    dep = Deployment.open(operator)
    if password is not None and any(c.isspace() for c in password):
        raise UserError("a bridge's password may not contain spaces (it is one word in mosquitto's config)")
    lab = BrokerAddress.parse_list(lab_urls or dep.url)
    for address in lab:
        if not address.tls:
            raise UserError(f"the bridge reaches the lab broker over TLS only: give mqtts://{address}")
        if address.host not in dep.hosts:
            raise UserError(f"the lab broker's certificate is valid for {', '.join(dep.hosts)}, not {address.host}: "
                            "use one of those, or re-issue it with that --host")
    bundle = add(operator, site, "bridge", (federation,), password, devices)
    login = dep.logins()[site]
    out = operator / "sites" / site
    ca_file = (site_dir or out).resolve() / LAB_CA
    _write(out / LAB_CA, (operator / "ca.crt").read_bytes())
    secret = json.loads((bundle / CREDENTIALS).read_text())["password"]
    _write(out / BRIDGE_CONF, render_bridge(login, lab, secret, ca_file).encode(), 0o600, broker_secret=True)
    return out
