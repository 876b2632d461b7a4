"""The one exception type for bad input: the CLI turns it into a one-screen message and exit code 2."""

from __future__ import annotations

import contextlib


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


def users_code(filename: str) -> bool:
    """A traceback frame's file is the user's: neither remflow's package nor the Python installation (the
    standard library, site-packages) nor a frozen module."""
    import os
    import sys

    import site

    if filename.startswith("<"):
        return False
    path = os.path.realpath(filename)
    if {"site-packages", "dist-packages"} & set(path.split(os.sep)):  # installed packages, wherever they live
        return False
    installed = {os.path.realpath(d) for d in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    with contextlib.suppress(Exception):  # a virtualenv's site module may lack these
        installed |= {os.path.realpath(d) for d in [*site.getsitepackages(), site.getusersitepackages()]}
    package = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    return not any(path == d or path.startswith(d + os.sep) for d in installed | {package})


def users_frame(e: BaseException):
    """The innermost frame of the user's own code in `e`'s traceback (a `traceback.FrameSummary`), or None."""
    import traceback

    user = [f for f in traceback.extract_tb(e.__traceback__) if users_code(f.filename)]
    return user[-1] if user else None


def where_raised(e: BaseException) -> str:
    """`file:line` of the innermost frame of the user's own code in `e`'s traceback (a plug-in calling numpy
    fails inside numpy: the user's line is the one to show), else of the innermost frame."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    f = users_frame(e) or (frames[-1] if frames else None)
    return f"{f.filename}:{f.lineno}" if f is not None else "?"
