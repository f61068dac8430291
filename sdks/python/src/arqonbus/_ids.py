"""Message ids: ``arq_`` + a ULID (PROTOCOL.md section 2).

A ULID is 128 bits: a 48-bit millisecond Unix timestamp followed by 80
random bits, written as 26 characters of Crockford base32 in upper case.
"""

from __future__ import annotations

import re
import secrets
import time

__all__ = ["new_id", "is_valid_id", "ZERO_ID"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_RE = re.compile(r"^arq_[0-7][0-9A-HJKMNP-TV-Z]{25}$")

#: The smallest possible id. No real message has it, so ``join_channel`` with
#: ``since=ZERO_ID`` replays everything the channel still keeps.
ZERO_ID = "arq_" + "0" * 26


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def new_id(timestamp_ms: int | None = None) -> str:
    """Returns a fresh ``arq_`` + ULID id (the current time unless given)."""
    ms = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    if not 0 <= ms < (1 << 48):
        raise ValueError(f"timestamp out of the 48-bit range: {ms}")
    return "arq_" + _encode((ms << 80) | secrets.randbits(80))


def is_valid_id(value: object) -> bool:
    """Whether ``value`` has the exact wire form of an id."""
    return isinstance(value, str) and _ID_RE.match(value) is not None
