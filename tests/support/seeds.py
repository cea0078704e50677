"""Seeds derived from a test's parameters that are the same in every process.

``hash()`` of a string is salted per process (PYTHONHASHSEED), so a seed made with it changes
from run to run and a failure does not reproduce; ``zlib.crc32`` of the parameters' repr does not.
"""

from __future__ import annotations

import zlib


def stable_seed(*parts) -> int:
    """A 32-bit seed from ``parts`` (anything with a deterministic repr: strings, numbers,
    tuples), the same in every process and on every platform."""
    return zlib.crc32(repr(parts).encode("utf-8"))
