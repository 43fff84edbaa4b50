"""The state of the round the aggregator has open (shared by the round driver, upload checks and sync answers)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fedmekt.learn.engine import RoundPlan
from fedmekt.wire.chunks import Reassembler


@dataclass
class OpenRound:
    plan: RoundPlan
    deadline: float  # time.monotonic() when the round closes, quorum or not
    need: int
    reassembler: Reassembler
    bytes_up: int = 0
    rejected: int = 0
    late: int = 0
    nonce: str = ""  # the announcement's nonce every upload header must echo
    global_frames: list = field(default_factory=list)  # the round's global knowledge (sync answers resend it)
    frame_bytes: dict = field(default_factory=dict)  # payload bytes per message key, counted when absorbed
    quiet_since: float = field(default_factory=time.monotonic)  # the last upload frame (or request to re-send)
    resend_wait: float = 0.0  # quiet seconds before the next request to re-send
