"""The operator's folder and the broker's folder: ``init``, ``add`` and ``remove`` logins.

Operator folder (mode 0700, stays with the operator)::

    ca.key  ca.crt  broker.json  logins.json  logins/<name>/{ca.crt, credentials.json}
    sites/<site>/{bridge.conf, lab-ca.crt}   (a site broker's bridge: ``fedmekt.provisioning.bridge``)

Broker folder (what mosquitto serves; default ``<operator>/broker``)::

    ca.crt  server.crt  server.key  passwd  acl  fedmekt.conf

Every write is atomic (temporary file + rename) so a crash never leaves half a key or a
password file that locks every device out.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fedmekt.errors import UserError
from fedmekt.provisioning import pki
from fedmekt.provisioning.acl import ALL_FEDERATIONS, ROLES, Login, render_acl
from fedmekt.provisioning.janitor import JANITOR
from fedmekt.provisioning.passwords import hash_line
from fedmekt.run_counter import epoch_file, read_epoch
from fedmekt.wire.manifest import AGGREGATOR_ID
from fedmekt.wire.runs import MAX_EPOCH

SHIPPED_DIR = "/etc/mosquitto/fedmekt"  # the paths in the shipped template
SHIPPED_PORT = 8883
SHIPPED_CONTROL = "8884 127.0.0.1"  # the control listener's port and address in the shipped template
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
# A login or federation name ends up as one MQTT topic level and as a file name: keep it boring.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BROKER_JSON, LOGINS_JSON, CREDENTIALS = "broker.json", "logins.json", "credentials.json"


def shipped_conf() -> str:
    """The mosquitto drop-in template installed with the package (also ``deploy/mosquitto/fedmekt.conf``)."""
    return resources.files("fedmekt.provisioning").joinpath("fedmekt.conf").read_text()


ALL_INTERFACES = "all"


def _listener(port: int, bind: str) -> str:
    return f"listener {port}" + ("" if bind == ALL_INTERFACES else f" {bind}") + "\n"


def render_conf(broker_dir: Path, port: int, bind: str = ALL_INTERFACES, control_port: int | None = None,
                control_bind: str = "127.0.0.1") -> str:
    """The shipped drop-in with its paths pointing into ``broker_dir``, the devices' listener on ``port`` bound
    to ``bind`` (``all``: every interface) and the control listener on ``control_port`` (default port + 1)
    bound to ``control_bind``."""
    text = shipped_conf().replace(SHIPPED_DIR, str(broker_dir.resolve()))
    text = text.replace(f"listener {SHIPPED_PORT}\n", _listener(port, bind))
    return text.replace(f"listener {SHIPPED_CONTROL}\n", _listener(control_port or port + 1, control_bind))


def default_bind(hosts: tuple[str, ...]) -> str:
    """Where the listener binds unless told: the first ``--host`` when it is an IP address (the address every
    login's credentials name), else every interface (a DNS name may resolve to any of them)."""
    try:
        return str(ipaddress.ip_address(hosts[0]))
    except ValueError:
        return ALL_INTERFACES


def check_bind(bind: str, what: str = "--bind") -> str:
    if bind == ALL_INTERFACES:
        return bind
    try:
        return str(ipaddress.ip_address(bind))
    except ValueError:
        raise UserError(f"invalid {what} {bind!r}: an IP address of the broker, or '{ALL_INTERFACES}'") from None


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name):
        raise UserError(f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '.', '-' (no / + # %)")
    return name


def _broker_owner() -> tuple[int, int] | None:
    """uid/gid of the ``mosquitto`` user when we run as root: the broker drops to it and must read its files."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("mosquitto")
    except (ImportError, KeyError):
        return None
    return entry.pw_uid, entry.pw_gid


def _write(path: Path, data: bytes, mode: int = 0o644, broker_secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        owner = _broker_owner() if broker_secret else None
        if owner:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Deployment:
    """An initialised operator folder and the broker folder it provisions."""

    operator: Path
    broker_dir: Path
    hosts: tuple[str, ...]
    port: int
    bind: str = ALL_INTERFACES  # the listener's address (folders made before --bind existed bound every one)
    control_port: int = 0  # the aggregator's and monitors' listener (0: none, a folder made before it existed)
    control_bind: str = "127.0.0.1"

    @classmethod
    def open(cls, operator: Path) -> "Deployment":
        path = operator / BROKER_JSON
        if not path.is_file():
            raise UserError(f"{operator} is not an operator folder (no {BROKER_JSON}): run `fedmekt provision init` first")
        d = json.loads(path.read_text())
        return cls(operator, Path(d["broker_dir"]), tuple(d["hosts"]), int(d["port"]), d.get("bind", ALL_INTERFACES),
                   int(d.get("control_port", 0)), d.get("control_bind", "127.0.0.1"))

    @property
    def url(self) -> str:
        return f"mqtts://{self.hosts[0]}:{self.port}"

    @property
    def control_url(self) -> str | None:
        """Where the aggregator and monitors connect: the control listener (None in a folder without one)."""
        if not self.control_port:
            return None
        host = "localhost" if is_loopback(self.control_bind) or self.control_bind == ALL_INTERFACES \
            else self.control_bind
        return f"mqtts://{host if ':' not in host else '[' + host + ']'}:{self.control_port}"

    def logins(self) -> dict[str, Login]:
        path = self.operator / LOGINS_JSON
        raw = json.loads(path.read_text()) if path.exists() else {}
        return {name: Login.from_json(name, d) for name, d in raw.items()}

    def _passwd(self) -> dict[str, str]:
        path = self.broker_dir / "passwd"
        lines = path.read_text().splitlines() if path.exists() else []
        return {line.split(":", 1)[0]: line for line in lines if line.strip()}

    def _save(self, logins: dict[str, Login], passwd: dict[str, str]) -> None:
        """Password file and ACL first (what the broker enforces), then the registry."""
        body = "".join(passwd[n] + "\n" for n in sorted(passwd))
        _write(self.broker_dir / "passwd", body.encode(), 0o600, broker_secret=True)
        _write(self.broker_dir / "acl", render_acl(list(logins.values())).encode(), 0o600, broker_secret=True)
        registry = {n: logins[n].to_json() for n in sorted(logins)}
        _write(self.operator / LOGINS_JSON, (json.dumps(registry, indent=2) + "\n").encode(), 0o600)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def init(operator: Path, hosts: tuple[str, ...], port: int = SHIPPED_PORT, broker_dir: Path | None = None,
         days: int = 825, bind: str | None = None, control_port: int | None = None,
         control_bind: str = "127.0.0.1") -> Deployment:
    """Create the CA (operator folder) and the broker's certificate, empty password file, ACL and config;
    the devices' listener binds ``bind`` (default :func:`default_bind`), the control listener (aggregator,
    monitors) ``control_bind``:``control_port`` (default port + 1); the certificate also names localhost
    when the control listener is on loopback, so the aggregator there verifies it."""
    if not hosts:
        raise UserError("give at least one --host (the name or IP address devices connect to)")
    for host in hosts:
        if not host or any(c in host for c in "/ \t\n"):
            raise UserError(f"invalid --host {host!r}")
    bind = check_bind(bind) if bind is not None else default_bind(hosts)
    control_bind = check_bind(control_bind, "--control-bind")
    control_port = port + 1 if control_port is None else control_port
    if not 0 < control_port < 65536 or control_port == port:
        raise UserError(f"--control-port must be 1-65535 and not --port {port}, got {control_port}")
    cert_hosts = tuple(dict.fromkeys(hosts + (LOOPBACK_HOSTS if is_loopback(control_bind) else ())))
    if not 0 < port < 65536:
        raise UserError(f"--port must be 1-65535, got {port}")
    if (operator / "ca.key").exists():
        raise UserError(f"{operator} already holds a CA (ca.key); refusing to overwrite it")
    broker_dir = (broker_dir or operator / "broker").resolve()
    if broker_dir == operator.resolve():
        raise UserError("the broker's folder must not be the operator's folder: it would hold the CA key")
    operator.mkdir(parents=True, exist_ok=True)
    os.chmod(operator, 0o700)
    broker_dir.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = pki.new_key(), pki.new_key()
    ca_cert = pki.ca_certificate(ca_key, days * 4)
    server_cert = pki.server_certificate(server_key, cert_hosts, ca_cert, ca_key, days)
    _write(operator / "ca.key", pki.key_pem(ca_key), 0o600)
    _write(operator / "ca.crt", pki.cert_pem(ca_cert))
    _write(broker_dir / "ca.crt", pki.cert_pem(ca_cert))
    _write(broker_dir / "server.key", pki.key_pem(server_key), 0o600, broker_secret=True)
    _write(broker_dir / "server.crt", pki.cert_pem(server_cert))
    _write(broker_dir / "fedmekt.conf", render_conf(broker_dir, port, bind, control_port, control_bind).encode())
    info = {"hosts": list(hosts), "port": port, "bind": bind, "control_port": control_port,
            "control_bind": control_bind, "broker_dir": str(broker_dir)}
    _write(operator / BROKER_JSON, (json.dumps(info, indent=2) + "\n").encode())
    dep = Deployment(operator, broker_dir, tuple(hosts), port, bind, control_port, control_bind)
    dep._save({}, {})
    add(operator, JANITOR, "janitor")
    return dep


def _check_relayed(logins: dict[str, Login], site: str, federations: tuple[str, ...], devices: tuple[str, ...]) -> None:
    """A bridge relays one federation's devices, none of them already relayed by another site."""
    if len(federations) != 1:
        raise UserError("a bridge relays one federation: give --federation NAME once (a second one: another bridge)")
    if not devices:
        raise UserError("a bridge relays the devices behind its site broker: "
                        "use `fedmekt provision bridge OPERATOR SITE --device ID …`")
    for device in devices:
        check_name(device, "device id")
        if device == AGGREGATOR_ID:
            raise UserError(f"{device!r} is the aggregator's protocol id, not a device")
        other = next((x.name for x in logins.values() if x.name != site and x.role == "bridge"
                      and x.federations == federations and device in x.devices), None)
        if other:
            raise UserError(f"device {device} of {federations[0]} is already behind site {other}")


def run_floors(federations: tuple[str, ...], aggregator_state: Path | None, min_epoch: int | None) -> dict[str, int]:
    """A new device's floor of run epochs per federation: ``min_epoch``, else the aggregator's run counter in
    ``aggregator_state`` (the federation's current run: the device follows it and newer ones), else 0."""
    if min_epoch is not None and aggregator_state is not None:
        raise UserError("give --min-epoch or --aggregator-state, not both")
    if min_epoch is not None:
        if not 0 <= min_epoch <= MAX_EPOCH:
            raise UserError(f"--min-epoch must be 0..{MAX_EPOCH}, got {min_epoch}")
        return {fed: min_epoch for fed in federations}
    if aggregator_state is None:
        return {fed: 0 for fed in federations}
    if not Path(aggregator_state).is_dir():
        raise UserError(f"--aggregator-state {aggregator_state} is not a folder")
    return {fed: read_epoch(epoch_file(aggregator_state, fed)) for fed in federations}


def add(operator: Path, name: str, role: str = "device", federations: tuple[str, ...] = (),
        password: str | None = None, devices: tuple[str, ...] = (), min_epoch: dict[str, int] | None = None) -> Path:
    """Add (or re-key) a login; returns its folder of ``ca.crt`` and ``credentials.json`` for the device.
    A ``bridge`` login is a site broker's, relaying ``devices`` (``fedmekt.provisioning.bridge``). A device's
    ``min_epoch`` ({federation: epoch}) goes into its credentials: the floor of runs it follows (edge_client/trust.py)."""
    dep = Deployment.open(operator)
    check_name(name, "login name")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    for fed in federations:
        check_name(fed, "federation")
    if name == AGGREGATOR_ID and role != "aggregator":
        raise UserError(f"{name!r} is the aggregator's protocol id: give this {role} login another name")
    if (name == JANITOR) != (role == "janitor"):
        raise UserError(f"{JANITOR!r} is the operator's janitor login (provision init and remove create it): "
                        f"give this {role} login another name" if name == JANITOR else
                        "the janitor login is created by provision init and remove, not added by hand")
    if role in ("device", "aggregator") and len(federations) != 1:
        raise UserError(f"a {role} login serves one federation (its saved session and session token belong to it): "
                        f"give --federation NAME once; for another federation add another login")
    logins = dep.logins()
    if name in logins and logins[name].role != role:
        raise UserError(f"{name!r} is already a {logins[name].role} login; remove it first")
    if role == "bridge":
        _check_relayed(logins, name, federations, devices)
    elif devices:
        raise UserError(f"only a bridge login relays devices, not a {role}")
    password = password or secrets.token_urlsafe(24)
    if ":" in password or "\n" in password or not password:
        raise UserError("a password must be non-empty and may not contain ':' or a newline")
    logins[name] = Login(name, role, tuple(federations) or (ALL_FEDERATIONS,), tuple(dict.fromkeys(devices)))
    passwd = dep._passwd()
    passwd[name] = hash_line(name, password)
    dep._save(logins, passwd)
    bundle = operator / "logins" / name
    bundle.mkdir(parents=True, exist_ok=True)
    os.chmod(bundle.parent, 0o700)
    os.chmod(bundle, 0o700)
    _write(bundle / "ca.crt", (operator / "ca.crt").read_bytes())
    creds = {"username": name, "password": password, "role": role, "federations": list(logins[name].federations),
             "broker": dep.url, "ca": "ca.crt"}
    if role == "device":
        creds["min_epoch"] = {fed: (min_epoch or {}).get(fed, 0) for fed in federations}
    _write(bundle / CREDENTIALS, (json.dumps(creds, indent=2) + "\n").encode(), 0o600)
    return bundle


def remove(operator: Path, name: str) -> None:
    """Revoke a login: no password, no ACL block, no bundle. What it left on the broker (retained messages) stays
    until :func:`clear` after the reload; a folder made before the janitor login existed gets it here, so the
    reload that follows activates it."""
    dep = Deployment.open(operator)
    logins, passwd = dep.logins(), dep._passwd()
    if name not in logins and name not in passwd:
        raise UserError(f"no login {name!r} in {operator / LOGINS_JSON}")
    if name == JANITOR:
        raise UserError(f"{JANITOR!r} is the operator's janitor login: it clears what revoked logins left; "
                        f"re-key it with `provision add {operator} {JANITOR} --role janitor` instead")
    if JANITOR not in logins:
        add(operator, JANITOR, "janitor")
        logins, passwd = dep.logins(), dep._passwd()
    logins.pop(name, None)
    passwd.pop(name, None)
    dep._save(logins, passwd)
    shutil.rmtree(operator / "logins" / name, ignore_errors=True)
    shutil.rmtree(operator / "sites" / name, ignore_errors=True)  # a bridge's config holds its password



def clear(operator: Path, name: str, broker: str | None = None, timeout: float = 30.0) -> int:
    """Delete the retained messages a revoked login left on the broker (run it after reloading mosquitto);
    returns how many. ``broker``: mqtts://HOST:PORT (default the control listener, else the devices')."""
    from urllib.parse import urlparse

    from fedmekt.provisioning.janitor import clear_retained

    dep = Deployment.open(operator)
    check_name(name, "login name")
    if name in dep.logins():
        raise UserError(f"{name!r} is still a login: revoke it first (`fedmekt provision remove {operator} {name}`, "
                        f"then reload mosquitto)")
    creds = operator / "logins" / JANITOR / CREDENTIALS
    if not creds.is_file():
        raise UserError(f"no janitor login in {operator}: `fedmekt provision remove` adds it; reload mosquitto")
    url = urlparse(broker or dep.control_url or dep.url)
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "mqtts" or not url.hostname or not port:
        raise UserError(f"--broker must look like mqtts://HOST:PORT, got {broker!r}")
    password = json.loads(creds.read_text())["password"]
    return clear_retained(url.hostname, port, password, str(operator / "ca.crt"), name, timeout)
