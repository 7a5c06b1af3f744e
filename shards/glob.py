"""Redis' glob-style pattern matching (stringmatchlen), compiled to regexes."""

from __future__ import annotations

import re
from functools import lru_cache

PATTERN_CACHE_ENTRIES = 256


@lru_cache(maxsize=PATTERN_CACHE_ENTRIES)
def compile_glob(pattern: bytes) -> re.Pattern[bytes]:
    out = bytearray()
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # *
            out += b".*"
        elif c == 63:  # ?
            out += b"."
        elif c == 92 and i + 1 < n:  # backslash escapes the next byte
            i += 1
            out += re.escape(pattern[i : i + 1])
        elif c == 91:  # [
            i += 1
            negate = i < n and pattern[i] == 94
            if negate:
                i += 1
            items = bytearray()
            while i < n and pattern[i] != 93:
                if pattern[i] == 92 and i + 1 < n:
                    i += 1
                    items += re.escape(pattern[i : i + 1])
                elif i + 2 < n and pattern[i + 1] == 45 and pattern[i + 2] != 93:
                    lo, hi = pattern[i], pattern[i + 2]
                    if lo > hi:
                        lo, hi = hi, lo
                    items += b"%s-%s" % (re.escape(bytes([lo])), re.escape(bytes([hi])))
                    i += 2
                else:
                    items += re.escape(pattern[i : i + 1])
                i += 1
            if not items:
                out += b"(?!)" if not negate else b"."
            else:
                out += b"[" + (b"^" if negate else b"") + bytes(items) + b"]"
        else:
            out += re.escape(pattern[i : i + 1])
        i += 1
    return re.compile(bytes(out) + b"\\Z", re.DOTALL)


def glob_match(pattern: bytes, text: bytes) -> bool:
    if pattern == b"*":
        return True
    return compile_glob(pattern).match(text) is not None
