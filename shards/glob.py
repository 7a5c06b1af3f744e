"""Redis' glob-style pattern matching (util.c stringmatchlen), compiled to regexes.

The translation reproduces stringmatchlen's quirks rather than POSIX fnmatch:
a `[...]` set is read by the same loop Redis runs (an escape wins over a range,
a range may swallow the closing `]`, an unclosed set ends at the pattern's end),
range bounds compare as signed C chars, `\\` at the end of a pattern is a literal
backslash, and a pattern only ever matches the empty string if it is empty.
"""

from __future__ import annotations

import re
from functools import lru_cache

PATTERN_CACHE_ENTRIES = 256
_ALL_BYTES = frozenset(range(256))


def _signed(byte: int) -> int:
    return byte - 256 if byte >= 128 else byte


def _bracket(pattern: bytes, i: int) -> tuple[frozenset[int], int]:
    """Parse the set starting just after `[` at i; returns the bytes it matches
    and the index of the pattern byte after the set."""
    n = len(pattern)
    negate = i < n and pattern[i] == 94  # '^'
    if negate:
        i += 1
    members: set[int] = set()
    while True:
        left = n - i
        if left >= 2 and pattern[i] == 92:  # '\'
            i += 1
            members.add(pattern[i])
        elif left > 0 and pattern[i] == 93:  # ']'
            break
        elif left == 0:
            i -= 1  # Redis steps back so its loop's final increment lands at the end
            break
        elif left >= 3 and pattern[i + 1] == 45:  # '-'
            lo, hi = _signed(pattern[i]), _signed(pattern[i + 2])
            if lo > hi:
                lo, hi = hi, lo
            members.update(b for b in range(256) if lo <= _signed(b) <= hi)
            i += 2
        else:
            members.add(pattern[i])
        i += 1
    matched = _ALL_BYTES - members if negate else frozenset(members)
    return matched, i + 1


def _byte_class(matched: frozenset[int]) -> bytes:
    if not matched:
        return b"(?!)"
    if matched == _ALL_BYTES:
        return b"."
    return b"[" + b"".join(re.escape(bytes([b])) for b in sorted(matched)) + b"]"


def _segments(pattern: bytes) -> list[bytes]:
    """Split the pattern at its `*` runs into regex fragments that each match a
    fixed number of bytes (every other token matches exactly one byte)."""
    segments = [bytearray()]
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # '*'
            while i + 1 < n and pattern[i + 1] == 42:
                i += 1
            segments.append(bytearray())
            i += 1
        elif c == 63:  # '?'
            segments[-1] += b"."
            i += 1
        elif c == 91:  # '['
            matched, i = _bracket(pattern, i + 1)
            segments[-1] += _byte_class(matched)
        else:
            if c == 92 and i + 1 < n:  # backslash escapes the next byte
                i += 1
            segments[-1] += re.escape(pattern[i : i + 1])
            i += 1
    return [bytes(s) for s in segments]


@lru_cache(maxsize=PATTERN_CACHE_ENTRIES)
def compile_glob(pattern: bytes) -> re.Pattern[bytes]:
    """Compile without exponential backtracking (Redis fixed the same blow-up in
    stringmatchlen): since each segment between stars has a fixed length, taking
    the leftmost occurrence of every middle segment is always a best choice, so
    those are atomic groups; only the last segment is anchored at the end."""
    first, *rest = _segments(pattern)
    if not rest:
        return re.compile(first + b"\\Z", re.DOTALL)
    *middle, last = rest
    body = first + b"".join(b"(?>.*?" + seg + b")" for seg in middle)
    return re.compile(body + b".*" + last + b"\\Z", re.DOTALL)


def glob_match(pattern: bytes, text: bytes) -> bool:
    """stringmatchlen(pattern, text, nocase=0) != 0, except that the pattern "*"
    alone matches everything, the empty string included, as KEYS and the SCAN
    family treat it (they skip matching for "*")."""
    if pattern == b"*":
        return True
    if not text:
        return not pattern
    return compile_glob(pattern).match(text) is not None
