"""Argument parsing with Redis' exact rules and error texts, shared by the type
modules (the equivalents of Redis' getLongLongFromObjectOrReply and friends)."""

from __future__ import annotations

import math

from shards.resp import ReplyError

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
LONG_MAX = LLONG_MAX

ERR_NOT_INT = ReplyError(b"ERR value is not an integer or out of range")
ERR_NOT_FLOAT = ReplyError(b"ERR value is not a valid float")
ERR_SYNTAX = ReplyError(b"ERR syntax error")
ERR_WRONGTYPE = ReplyError(b"WRONGTYPE Operation against a key holding the wrong kind of value")
ERR_OVERFLOW = ReplyError(b"ERR increment or decrement would overflow")
ERR_NO_SUCH_KEY = ReplyError(b"ERR no such key")
ERR_OFFSET = ReplyError(b"ERR offset is out of range")
ERR_TOO_BIG = ReplyError(b"ERR string exceeds maximum allowed size (proto-max-bulk-len)")
ERR_INDEX = ReplyError(b"ERR index out of range")

MAX_STRING_BYTES = 512 * 1024 * 1024


def parse_ll(text: bytes) -> int | None:
    """Redis' string2ll: an optional '-', no leading zeros, no spaces or '+', fits in
    a signed 64-bit integer. Returns None when the text is not such an integer."""
    n = len(text)
    if n == 0 or n > 20:
        return None
    if text.isdigit():
        if text[0] == 48 and n > 1:
            return None
        value = int(text)
        return value if value <= LLONG_MAX else None
    if text[0] == 45 and text[1:].isdigit() and text[1] != 48:
        value = int(text)
        return value if value >= LLONG_MIN else None
    return None


def int_arg(text: bytes, error: ReplyError = ERR_NOT_INT) -> int:
    value = parse_ll(text)
    if value is None:
        raise error
    return value


def parse_float(text: bytes) -> float | None:
    """Redis' string2d/strtold acceptance: no surrounding spaces, no NaN."""
    if not text or text[0] in b" \t\r\n\v\f" or text[-1] in b" \t\r\n\v\f" or b"_" in text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if math.isnan(value):
        return None
    return value


def float_arg(text: bytes, error: ReplyError = ERR_NOT_FLOAT) -> float:
    value = parse_float(text)
    if value is None:
        raise error
    return value


def is_string(value: object) -> bool:
    t = type(value)
    return t is bytes or t is bytearray
