"""Argument parsing with Redis' exact rules and error texts, shared by the type
modules (the equivalents of Redis' getLongLongFromObjectOrReply and friends)."""

from __future__ import annotations

from durakv.shards.numbers import INT_MAX, INT_MIN, parse_float, parse_ll
from durakv.shards.resp import ReplyError, fixed_error

ERR_NOT_INT = fixed_error(b"ERR value is not an integer or out of range")
ERR_NOT_FLOAT = fixed_error(b"ERR value is not a valid float")
ERR_SYNTAX = fixed_error(b"ERR syntax error")
ERR_WRONGTYPE = fixed_error(b"WRONGTYPE Operation against a key holding the wrong kind of value")
ERR_OVERFLOW = fixed_error(b"ERR increment or decrement would overflow")
ERR_NO_SUCH_KEY = fixed_error(b"ERR no such key")
ERR_OFFSET = fixed_error(b"ERR offset is out of range")
ERR_TOO_BIG = fixed_error(b"ERR string exceeds maximum allowed size (proto-max-bulk-len)")
ERR_INDEX = fixed_error(b"ERR index out of range")

MAX_STRING_BYTES = 512 * 1024 * 1024


def int_arg(text: bytes, error: type[ReplyError] = ERR_NOT_INT) -> int:
    value = parse_ll(text)
    if value is None:
        raise error
    return value


def float_arg(text: bytes, error: type[ReplyError] = ERR_NOT_FLOAT) -> float:
    value = parse_float(text)
    if value is None:
        raise error
    return value


def int_range_arg(text: bytes, lo: int, hi: int) -> int:
    """Redis' getRangeLongFromObjectOrReply (getIntFromObjectOrReply for the C int range)."""
    value = int_arg(text)
    if not lo <= value <= hi:
        raise ReplyError(b"ERR value is out of range, value must between %d and %d" % (lo, hi))
    return value


def select_db(text: bytes) -> None:
    """SELECT's argument in cluster mode, as Redis Cluster checks it: database 0 only
    (for the router's SELECT and a script's redis.call('select', ...))."""
    if int_range_arg(text, INT_MIN, INT_MAX) != 0:
        raise ReplyError(b"ERR SELECT is not allowed in cluster mode")


def is_string(value: object) -> bool:
    t = type(value)
    return t is bytes or t is bytearray


ERR_NUMKEYS = fixed_error(b"ERR numkeys should be greater than 0")
ERR_COUNT = fixed_error(b"ERR count should be greater than 0")


def parse_numkeys_side_count(argv: list[bytes], numkeys_index: int,
                             sides: dict[bytes, object]) -> tuple[list[bytes], object, int]:
    """`numkeys key [key ...] SIDE [COUNT count]` from numkeys_index on, shared by
    LMPOP/BLMPOP (LEFT|RIGHT) and ZMPOP/BZMPOP (MIN|MAX): (keys, side, count)."""
    numkeys = parse_ll(argv[numkeys_index])
    if numkeys is None or numkeys < 1:
        raise ERR_NUMKEYS
    side_index = numkeys_index + numkeys + 1
    if side_index >= len(argv):
        raise ERR_SYNTAX
    side = sides.get(argv[side_index].upper(), _NO_SIDE)
    if side is _NO_SIDE:
        raise ERR_SYNTAX
    count = -1
    i = side_index + 1
    while i < len(argv):
        if count == -1 and argv[i].upper() == b"COUNT" and i + 1 < len(argv):
            count = parse_ll(argv[i + 1])
            if count is None or count < 1:
                raise ERR_COUNT
            i += 2
        else:
            raise ERR_SYNTAX
    return argv[numkeys_index + 1 : side_index], side, 1 if count == -1 else count


_NO_SIDE = object()
