"""Signed control messages: what the aggregator tells clients, verifiable with its Ed25519 public key.

A signed payload is an envelope around the unchanged message::

    b"FMKS" | Ed25519 signature (64 B) | payload

The signature covers ``sha256(DOMAIN | topic | 0x00 | payload)``: one fixed-size digest per
message (cheap for a large manifest) that also binds it to its topic, so a signed message of one
federation or topic cannot be replayed on another. The federation manifest, round announcements
and "done" are signed this way; the proxy set and the global knowledge are bound to hashes that
signed messages name (``proxy_sha256`` in the manifest, ``global_sha256`` in the announcement), so
their chunks need no signature of their own.

A receiver with the key accepts only a valid envelope; a receiver without one (development runs)
accepts plain payloads and unwraps envelopes without checking them, as before signing existed.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmekt.wire.codec import WireError

MAGIC = b"FMKS"
SIGNATURE_BYTES = 64
DOMAIN = b"fedmekt-control-v1\x00"


def _digest(topic: str, payload: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + topic.encode() + b"\x00" + payload).digest()


def sign(key: Ed25519PrivateKey | None, topic: str, payload: bytes) -> bytes:
    """The envelope for ``payload`` on ``topic``; unchanged without a key (and empty payloads, which clear)."""
    if key is None or not payload:
        return payload
    return MAGIC + key.sign(_digest(topic, payload)) + payload


def _is_signed(data: bytes) -> bool:
    return data.startswith(MAGIC) and len(data) >= len(MAGIC) + SIGNATURE_BYTES


def unwrap(data: bytes) -> bytes:
    """The payload of a signed or plain message, not verified (observers; JSON never starts with MAGIC)."""
    return data[len(MAGIC) + SIGNATURE_BYTES:] if _is_signed(data) else data


def open_signed(public_key: Ed25519PublicKey | None, topic: str, data: bytes) -> bytes:
    """The payload inside ``data``; WireError (one line) if a configured key does not verify it.

    Empty payloads (a cleared retained message) pass through: there is nothing to act on.
    """
    signed = _is_signed(data)
    payload = unwrap(data)
    if public_key is None or not data:
        return payload
    if not signed:
        raise WireError("unsigned control message (a public key is configured)")
    try:
        public_key.verify(data[len(MAGIC):len(MAGIC) + SIGNATURE_BYTES], _digest(topic, payload))
    except InvalidSignature:
        raise WireError("bad signature: not signed by the aggregator's key, or altered") from None
    return payload
