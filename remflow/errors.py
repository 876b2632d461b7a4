"""The one exception type for bad input: the CLI turns it into a one-screen message and exit code 2."""

from __future__ import annotations


class RemflowError(Exception):
    """A problem with what the user gave (params, files, flags), never a bug in remflow.

    key: where the problem is (a params key path like `grid.discovery_rates.2`, or a file path);
    got: what was given; hint: what to do about it.
    """

    def __init__(self, message: str, *, key: str | None = None, got: object = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.got = got
        self.hint = hint
