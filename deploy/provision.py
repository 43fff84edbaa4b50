"""Provision the fedmekt broker and its devices: CA, server certificate, users, ACL.

Run from the repository root::

    python -m deploy.provision init /etc/mosquitto/fedmekt --host broker.example.org --host 10.0.0.5
    python -m deploy.provision add /etc/mosquitto/fedmekt aggregator --role aggregator
    python -m deploy.provision add /etc/mosquitto/fedmekt c000          # a device
    python -m deploy.provision remove /etc/mosquitto/fedmekt c000       # revoke it

``init`` writes a private CA, a server certificate for the given host names / IP
addresses, an empty password file, the ACL (deploy/mosquitto/acl) and the mosquitto
drop-in (deploy/mosquitto/fedmekt.conf) rendered with that folder's paths and port.
``add`` hashes a fresh random password into the password file with ``mosquitto_passwd``
(the clear password never appears on a command line) and writes a bundle for the
device: ``devices/<name>/ca.crt`` and ``credentials.json`` (mode 0600). Reload
mosquitto (SIGHUP) after ``add`` / ``remove``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent / "mosquitto"
SHIPPED_CONF = HERE / "fedmekt.conf"
SHIPPED_ACL = HERE / "acl"
SHIPPED_DIR = "/etc/mosquitto/fedmekt"
SHIPPED_PORT = 8883
ROLES = ("device", "aggregator", "monitor")
RESERVED = {"aggregator", "monitor"}
# A user name ends up as one MQTT topic level and as a file name: keep it boring.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ProvisionError(Exception):
    """Bad input to the provisioning tool; printed as one line."""


def check_name(name: str, role: str) -> str:
    if not NAME_RE.match(name) or name in (".", ".."):
        raise ProvisionError(f"invalid name {name!r}: use 1-64 letters, digits, '_', '.', '-' (no / + # %)")
    if role == "device" and name in RESERVED:
        raise ProvisionError(f"{name!r} is reserved for the {name} role; pick another device id")
    if role != "device" and name != role:
        raise ProvisionError(f"the {role} user must be called {role!r} (the ACL grants rights by that name)")
    return name


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _broker_owner() -> tuple[int, int] | None:
    """uid/gid of the ``mosquitto`` user when we run as root: the broker drops to it and must read its secrets."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("mosquitto")
    except (ImportError, KeyError):
        return None
    return entry.pw_uid, entry.pw_gid


def _write(path: Path, data: bytes, mode: int = 0o644, broker_secret: bool = False) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a key."""
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


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name: x509.Name | None, issuer_key, days: int, *, ca: bool,
          hosts: tuple[str, ...] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = (builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def render_conf(folder: Path, port: int) -> str:
    """The shipped drop-in with its paths pointing into ``folder`` and its listener on ``port``."""
    text = SHIPPED_CONF.read_text()
    text = text.replace(SHIPPED_DIR, str(folder.resolve()))
    return text.replace(f"listener {SHIPPED_PORT}\n", f"listener {port}\n")


def init(folder: Path, hosts: tuple[str, ...], port: int = SHIPPED_PORT, days: int = 825) -> None:
    """Create the CA, the server certificate, an empty password file, the ACL and the config."""
    if not hosts:
        raise ProvisionError("give at least one --host (the name or IP address devices connect to)")
    if (folder / "ca.key").exists():
        raise ProvisionError(f"{folder} already holds a CA (ca.key); refusing to overwrite it")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = _key(), _key()
    ca_cert = _cert("fedmekt CA", ca_key, None, ca_key, days * 4, ca=True)
    server_cert = _cert(hosts[0], server_key, ca_cert.subject, ca_key, days, ca=False, hosts=hosts)
    _write(folder / "ca.key", _pem_key(ca_key), 0o600)
    _write(folder / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / "server.key", _pem_key(server_key), 0o600, broker_secret=True)
    _write(folder / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / "passwd", b"", 0o600, broker_secret=True)
    _write(folder / "acl", SHIPPED_ACL.read_bytes())
    _write(folder / "fedmekt.conf", render_conf(folder, port).encode())
    (folder / "broker.json").write_text(json.dumps({"hosts": list(hosts), "port": port}))


def _passwd_lines(folder: Path) -> list[str]:
    path = folder / "passwd"
    if not path.exists():
        raise ProvisionError(f"{path} not found: run `python -m deploy.provision init {folder}` first")
    return [line for line in path.read_text().splitlines() if line.strip()]


def add(folder: Path, name: str, role: str = "device", password: str | None = None) -> Path:
    """Add (or re-key) a user; returns the folder holding its ca.crt and credentials.json."""
    check_name(name, role)
    lines = [line for line in _passwd_lines(folder) if line.split(":", 1)[0] != name]
    password = password or secrets.token_urlsafe(24)
    if ":" in password or "\n" in password:
        raise ProvisionError("a password may not contain ':' or a newline")
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise ProvisionError("mosquitto_passwd not found (Debian: apt-get install -y mosquitto)")
    # -U hashes a plain-text file in place: the password is never on a command line.
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        plain = Path(tmp) / "one"
        _write(plain, f"{name}:{password}\n".encode(), 0o600)
        done = subprocess.run([tool, "-U", str(plain)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ProvisionError(f"mosquitto_passwd failed: {(done.stderr or done.stdout).strip()}")
        lines.append(plain.read_text().strip())
    _write(folder / "passwd", ("\n".join(lines) + "\n").encode(), 0o600, broker_secret=True)
    broker = json.loads((folder / "broker.json").read_text())
    bundle = folder / "devices" / name
    _write(bundle / "ca.crt", (folder / "ca.crt").read_bytes())
    creds = {"username": name, "password": password, "role": role,
             "broker": f"mqtts://{broker['hosts'][0]}:{broker['port']}", "ca": "ca.crt"}
    _write(bundle / "credentials.json", (json.dumps(creds, indent=2) + "\n").encode(), 0o600)
    os.chmod(bundle, 0o700)
    return bundle


def remove(folder: Path, name: str) -> None:
    """Revoke a user: drop it from the password file and delete its bundle."""
    lines = _passwd_lines(folder)
    kept = [line for line in lines if line.split(":", 1)[0] != name]
    if len(kept) == len(lines):
        raise ProvisionError(f"no user {name!r} in {folder / 'passwd'}")
    _write(folder / "passwd", ("\n".join(kept) + "\n").encode() if kept else b"", 0o600, broker_secret=True)
    shutil.rmtree(folder / "devices" / name, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.provision", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="create CA, server certificate, password file, ACL and mosquitto config")
    p.add_argument("folder", type=Path)
    p.add_argument("--host", action="append", required=True, help="DNS name or IP devices use (repeatable)")
    p.add_argument("--port", type=int, default=SHIPPED_PORT)
    p.add_argument("--days", type=int, default=825, help="server certificate lifetime")
    p = sub.add_parser("add", help="add a device (or the aggregator / monitor user)")
    p.add_argument("folder", type=Path)
    p.add_argument("name", help="device id == MQTT username, e.g. c000")
    p.add_argument("--role", choices=ROLES, default="device")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (else random)")
    p = sub.add_parser("remove", help="revoke a user")
    p.add_argument("folder", type=Path)
    p.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            init(args.folder, tuple(args.host), args.port, args.days)
            print(f"CA, server certificate and config in {args.folder}; "
                  f"install {args.folder / 'fedmekt.conf'} into /etc/mosquitto/conf.d/")
        elif args.command == "add":
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
            bundle = add(args.folder, args.name, args.role, password)
            print(f"{args.role} {args.name}: copy {bundle}/ to the device; reload mosquitto (SIGHUP)")
        else:
            remove(args.folder, args.name)
            print(f"removed {args.name}; reload mosquitto (SIGHUP)")
    except (ProvisionError, OSError) as exc:
        print(f"provision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
