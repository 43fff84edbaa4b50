"""Text from devices made safe for a terminal or a log line.

A device's status, topic or metrics row may carry ESC and BEL (retitle the operator's window, clear
the screen), other C0/C1 controls, or a newline that fakes a line of output such as ``c000: online``.
Whatever a person reads passes through :func:`printable` first: every control, format, line or
paragraph separator character is shown as a Python-style escape (``\\x1b``, ``\\n``, ``\\u2028``)
instead of acting on the terminal.
"""

from __future__ import annotations

import logging
import unicodedata

_UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, limit: int | None = None) -> str:
    """``text`` as one line of inert characters, cut to ``limit`` characters first (with "…")."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    if s.isprintable() and s.isascii():  # the common case, cheap
        return s
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s)


class PrintableFormatter(logging.Formatter):
    """A log formatter whose message part is :func:`printable`: one record, one line, no terminal control.

    Tracebacks keep their lines (they are ours); only the message, which may quote a device, is escaped.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)
