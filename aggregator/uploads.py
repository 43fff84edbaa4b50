"""Upload validation: every upload frame is checked before any of it reaches the engine.

Late, duplicate, unselected or invalid uploads are discarded with one log line each; a frame 0 whose header
does not echo the round's nonce (a replayed or re-framed upload), or whose tensors or modalities differ from
what the client announced, is refused; a complete upload is decoded against the expected tensor set and
folded into the engine's streaming mean.
"""

from __future__ import annotations

import logging
import time

from aggregator.open_round import OpenRound
from fedmekt.wire.codec import WireError, WireLimits, check_spec, decode_body, parse_frame

log = logging.getLogger("aggregator")


class UploadDesk:
    """Checks upload frames against the open round; ``discarded`` holds one line per discarded upload."""

    def __init__(self, federation: str, limits: WireLimits):
        self.federation, self.limits = federation, limits
        self.discarded: list[str] = []  # one line per discarded upload (also logged)

    def discard(self, why: str) -> None:
        log.warning("discarded upload: %s", why)
        self.discarded.append(why)

    def take(self, client_id: str, topic_round: str, payload: bytes, r: OpenRound | None, absorbed: set[str],
             server, mods: tuple[str, ...], device_class: str | None = None) -> bool:
        """Check one frame of ``client_id``'s upload (``mods``, ``device_class``: what it announced; the class sets
        the shapes under HeteroFL); True once its whole upload was absorbed by ``server`` (the caller records it)."""
        try:
            header, body = parse_frame(payload, self.limits)
        except WireError as exc:
            if r:
                r.rejected += 1
            self.discard(f"{client_id}: {exc.reason}")
            return False
        if header.sender != client_id or str(header.round) != topic_round or header.kind != "upload" \
                or header.federation != self.federation:
            if r:
                r.rejected += 1
            self.discard(f"{client_id}: header does not match its topic")
            return False
        if r is None or header.round < r.plan.round:
            if header.index == 0:
                if r:
                    r.late += 1
                self.discard(f"{client_id}: late upload for round {header.round + 1}")
            return False
        if header.round > r.plan.round or client_id not in r.plan.selected:
            if header.index == 0:
                self.discard(f"{client_id}: not selected for round {header.round + 1}")
            return False
        if client_id in absorbed or r.reassembler.is_done(header):
            if header.index == 0:
                self.discard(f"{client_id}: duplicate upload for round {header.round + 1}")
            return False
        try:
            expected = server.expected_upload(mods, r.plan, device_class)
            if header.index == 0:
                if tuple(sorted(header.modalities)) != tuple(sorted(mods)):
                    raise WireError(f"modalities {header.modalities} differ from announced {mods}")
                check_spec(header.tensors, expected)
            if header.nonce != r.nonce:  # later frames are bound to frame 0 by the body's sha256
                if header.index == 0:
                    raise WireError("nonce does not match the round's announcement (a replayed or re-framed upload)")
                return False
            done = r.reassembler.add_parsed(header, body)
            r.frame_bytes[header.key] = r.frame_bytes.get(header.key, 0) + len(payload)
            r.quiet_since = time.monotonic()
            if done is None:
                return False
            tensors = decode_body(done.header, done.body, expected)
            server.absorb(client_id, mods, tensors, device_class)
        except (WireError, ValueError) as exc:
            r.rejected += 1
            self.discard(f"{client_id} round {header.round + 1}: {getattr(exc, 'reason', exc)}")
            return False
        r.bytes_up += r.frame_bytes.pop(header.key, 0)
        return True
