"""Reassembly of chunked messages with bounded memory and idempotent keys.

QoS 1 delivers at least once, so a frame may arrive twice and a client that restarts
may re-send a whole upload. A frame is identified by (sender, kind, round, message
id, chunk index) where the message id is derived from the body's sha256: repeats are
dropped here, completed messages are remembered (bounded) so a late duplicate is
reported, and per-message / per-round-per-sender byte limits cap what one sender can
make the receiver buffer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from fedmekt.wire.codec import Header, WireError, WireLimits, parse_frame

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    header0: Header | None
    first: Header
    parts: dict[int, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.parts.values())


@dataclass
class Complete:
    """A fully reassembled message: frame-0 header and body (not yet tensor-decoded)."""

    header: Header
    body: bytes


class Reassembler:
    """Collect frames into messages.

    ``add`` returns a :class:`Complete` when the last missing frame of a message
    arrives, ``None`` otherwise (including for duplicates), and raises
    :class:`WireError` for anything malformed. At most ``max_pending`` incomplete
    messages are held (the oldest is dropped with a log line), so memory stays
    below ``max_pending * limits.max_message`` however many senders there are.
    """

    def __init__(self, limits: WireLimits = WireLimits(), max_pending: int = 64, remember: int = 4096):
        self.limits = limits
        self.max_pending = max_pending
        self.remember = remember
        self._pending: OrderedDict[tuple, _Pending] = OrderedDict()
        self._done: OrderedDict[tuple, None] = OrderedDict()
        self._round_bytes: OrderedDict[tuple[str, int], int] = OrderedDict()
        self.duplicates = 0

    def add(self, payload: bytes) -> Complete | None:
        header, body = parse_frame(payload, self.limits)
        return self.add_parsed(header, body)

    def add_parsed(self, header: Header, body: bytes) -> Complete | None:
        key = header.key
        if key in self._done:
            self.duplicates += 1
            return None
        pend = self._pending.get(key)
        if pend is None:
            self._charge(header)
            pend = _Pending(header0=None, first=header)
            self._pending[key] = pend
            self._evict()
        elif (header.count, header.size, header.step, header.sha256, header.dtype, header.modalities,
              header.federation) != (pend.first.count, pend.first.size, pend.first.step, pend.first.sha256,
                                     pend.first.dtype, pend.first.modalities, pend.first.federation):
            del self._pending[key]
            raise WireError(f"frames of message {header.msg} from {header.sender} disagree")
        if header.index in pend.parts:
            self.duplicates += 1
            return None
        pend.parts[header.index] = body
        if header.index == 0:
            pend.header0 = header
        if len(pend.parts) < header.count:
            return None
        del self._pending[key]
        self._mark_done(key)
        assert pend.header0 is not None
        return Complete(pend.header0, b"".join(pend.parts[i] for i in range(header.count)))

    def is_done(self, header: Header) -> bool:
        return header.key in self._done

    def forget_round(self, round_: int) -> list[tuple[str, int, int]]:
        """Drop incomplete messages of rounds up to ``round_`` (a closed round's stragglers).

        Returns (sender, chunks held, chunks expected) of each one dropped, for the caller's log.
        """
        dropped = []
        for key in [k for k in self._pending if k[2] <= round_]:
            pend = self._pending.pop(key)
            dropped.append((key[0], len(pend.parts), pend.first.count))
        return dropped

    @property
    def pending_bytes(self) -> int:
        return sum(p.nbytes for p in self._pending.values())

    def _charge(self, header: Header) -> None:
        rk = (header.sender, header.round)
        total = self._round_bytes.get(rk, 0) + header.size
        if total > self.limits.max_round:
            raise WireError(f"{header.sender} exceeds the per-round limit of {self.limits.max_round} B "
                            f"in round {header.round}")
        self._round_bytes[rk] = total
        self._round_bytes.move_to_end(rk)
        while len(self._round_bytes) > self.remember:
            self._round_bytes.popitem(last=False)

    def _evict(self) -> None:
        while len(self._pending) > self.max_pending:
            key, _ = self._pending.popitem(last=False)
            log.warning("dropping incomplete message %s from %s (round %s): too many pending", key[3], key[0], key[2])

    def _mark_done(self, key: tuple) -> None:
        self._done[key] = None
        while len(self._done) > self.remember:
            self._done.popitem(last=False)
