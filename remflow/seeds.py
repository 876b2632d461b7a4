"""Seeds derived from labelled parts, so that each random decision of a run has its own stream."""

from __future__ import annotations

import zlib


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from labelled parts (crc32 of their repr)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF
