"""The one error type of the data layer: input a user can fix (a path, a descriptor, a column).

It lives here, at the bottom of the stack, so that ``sensors`` imports nothing of ours; the core
re-exports it as ``fedmekt.errors.UserError`` and the CLI prints it as one line.
"""


class UserError(Exception):
    """Bad input from the user (path, dataset, config, broker address…)."""
