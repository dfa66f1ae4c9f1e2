"""Sub-commands of `flash-payouts`: each module here has ``register(subparsers, parents)``.

A command's handler takes the parsed arguments and returns an exit code (or None for 0); it
raises ``CommandError`` (or ``ConfigError``) with one line for the operator on bad input.
"""

from __future__ import annotations


class CommandError(Exception):
    """A failure to report as one line and a non-zero exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
