"""mosquitto password-file lines, hashed here so the iteration count is ours to choose.

mosquitto_passwd 2.0.x always writes 101 PBKDF2 iterations (no option to raise it), but
the broker reads the count from each line (``$7$<iterations>$<salt>$<hash>``), so we
write the same format with a count that makes offline guessing of a stolen file slow.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

# PBKDF2-HMAC-SHA512 iterations; mosquitto_passwd writes 101. mosquitto checks the hash on every
# CONNECT in its single thread, so the count is a trade: 100 000 cost 0.1-0.2 s per login here
# (bench/bench_broker_login.py), i.e. minutes of stalled broker when a thousand gateways reconnect at
# once. Generated passwords (24 random bytes) resist guessing at any count; the iterations protect the
# ones an operator chooses (--password-stdin).
ITERATIONS = 10_000
SALT_BYTES = 12  # what mosquitto_passwd uses


def hash_line(username: str, password: str, iterations: int = ITERATIONS) -> str:
    """``username:$7$…`` as mosquitto's sha512-pbkdf2 scheme expects it."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    b64 = base64.b64encode
    return f"{username}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"

