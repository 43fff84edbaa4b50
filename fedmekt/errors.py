"""Errors a user can fix: the CLI prints them as one line and exits non-zero.

``UserError`` is defined by the data layer (``sensors.errors``), the bottom of the stack, so that one
type covers a bad dataset and a bad broker address alike.
"""
from sensors.errors import UserError

__all__ = ["UserError"]
