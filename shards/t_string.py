"""String commands (Redis' t_string.c). Every mutation records its effect with
absolute times: SET ... EX becomes SET ... PXAT, INCRBYFLOAT becomes SET ... KEEPTTL."""

from __future__ import annotations

import decimal
from array import array

from shards.args import (
    ERR_NOT_INT, ERR_OFFSET, ERR_OVERFLOW, ERR_SYNTAX, ERR_TOO_BIG, ERR_WRONGTYPE,
    LLONG_MAX, LLONG_MIN, MAX_STRING_BYTES, int_arg, parse_ll,
)
from shards.context import Ctx
from shards.resp import OK, Map, ReplyError
from shards.table import SPLIT_MGET, command

EMPTY = b""


def get_string(ctx: Ctx, key: bytes) -> bytes | bytearray | None:
    value = ctx.db.get(key)
    if value is None:
        return None
    t = type(value)
    if t is bytes or t is bytearray:
        return value
    raise ERR_WRONGTYPE


@command("get", 2, "readonly fast", (1, 1, 1), "string")
def get(ctx: Ctx, argv: list[bytes]):
    value = ctx.db.get(argv[1])
    if value is None:
        return None
    t = type(value)
    if t is bytes:
        return value
    if t is bytearray:
        return bytes(value)
    raise ERR_WRONGTYPE


# --- SET and its option parser ------------------------------------------------

_SET_NX, _SET_XX, _SET_GET, _SET_KEEPTTL = 1, 2, 4, 8
_UNIT_FLAGS = {b"EX": 1000, b"PX": 1, b"EXAT": -1000, b"PXAT": -1}


def expire_at_ms(ctx: Ctx, text: bytes, unit: int, cmdname: bytes) -> int:
    """Absolute expiry in ms from an EX/PX/EXAT/PXAT argument (unit < 0: absolute)."""
    value = int_arg(text)
    scale = abs(unit)
    if value <= 0 or (scale == 1000 and value > LLONG_MAX // 1000):
        raise ReplyError(b"ERR invalid expire time in '%s' command" % cmdname)
    value *= scale
    if unit > 0:
        now = ctx.db.now()
        if value > LLONG_MAX - now:
            raise ReplyError(b"ERR invalid expire time in '%s' command" % cmdname)
        value += now
    return value


@command("set", -3, "write denyoom", (1, 1, 1), "string")
def set_(ctx: Ctx, argv: list[bytes]):
    key, value = argv[1], argv[2]
    if len(argv) == 3:
        db = ctx.db
        db.put(key, value)
        db.effect(argv, key)
        return OK
    flags = 0
    expire_arg = None
    unit = 0
    i = 3
    n = len(argv)
    while i < n:
        opt = argv[i].upper()
        has_next = i + 1 < n
        if opt == b"NX" and not flags & _SET_XX:
            flags |= _SET_NX
        elif opt == b"XX" and not flags & _SET_NX:
            flags |= _SET_XX
        elif opt == b"GET":
            flags |= _SET_GET
        elif opt == b"KEEPTTL" and expire_arg is None:
            flags |= _SET_KEEPTTL
        elif opt in _UNIT_FLAGS and not flags & _SET_KEEPTTL and expire_arg is None and has_next:
            unit = _UNIT_FLAGS[opt]
            expire_arg = argv[i + 1]
            i += 1
        else:
            raise ERR_SYNTAX
        i += 1
    when = expire_at_ms(ctx, expire_arg, unit, b"set") if expire_arg is not None else None
    db = ctx.db
    old = db.get(key)
    reply = OK
    if flags & _SET_GET:
        if old is not None and type(old) is not bytes and type(old) is not bytearray:
            raise ERR_WRONGTYPE
        reply = bytes(old) if old is not None else None
    if (flags & _SET_NX and old is not None) or (flags & _SET_XX and old is None):
        return reply if flags & _SET_GET else None
    keep = bool(flags & _SET_KEEPTTL)
    db.put(key, value, keep_ttl=keep)
    if when is not None:
        db.set_expire(key, when)
        db.effect([b"SET", key, value, b"PXAT", b"%d" % when], key)
    elif keep:
        db.effect([b"SET", key, value, b"KEEPTTL"], key)
    else:
        db.effect([b"SET", key, value], key)
    return reply


@command("setnx", 3, "write denyoom fast", (1, 1, 1), "string")
def setnx(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    key = argv[1]
    if db.get(key) is not None:
        return 0
    db.put(key, argv[2])
    db.effect([b"SET", key, argv[2]], key)
    return 1


def _setex(ctx: Ctx, argv: list[bytes], unit: int, name: bytes):
    key = argv[1]
    when = expire_at_ms(ctx, argv[2], unit, name)
    db = ctx.db
    db.put(key, argv[3])
    db.set_expire(key, when)
    db.effect([b"SET", key, argv[3], b"PXAT", b"%d" % when], key)
    return OK


@command("setex", 4, "write denyoom", (1, 1, 1), "string")
def setex(ctx: Ctx, argv: list[bytes]):
    return _setex(ctx, argv, 1000, b"setex")


@command("psetex", 4, "write denyoom", (1, 1, 1), "string")
def psetex(ctx: Ctx, argv: list[bytes]):
    return _setex(ctx, argv, 1, b"psetex")


@command("getset", 3, "write denyoom fast", (1, 1, 1), "string")
def getset(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    old = get_string(ctx, key)
    ctx.db.put(key, argv[2])
    ctx.db.effect([b"SET", key, argv[2]], key)
    return bytes(old) if old is not None else None


@command("getdel", 2, "write fast", (1, 1, 1), "string")
def getdel(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    old = get_string(ctx, key)
    if old is None:
        return None
    ctx.db.delete(key)
    ctx.db.effect([b"DEL", key], key)
    return bytes(old)


@command("getex", -2, "write fast", (1, 1, 1), "string")
def getex(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    persist = False
    unit = 0
    expire_arg = None
    i = 2
    n = len(argv)
    while i < n:
        opt = argv[i].upper()
        if opt in _UNIT_FLAGS and expire_arg is None and not persist and i + 1 < n:
            unit = _UNIT_FLAGS[opt]
            expire_arg = argv[i + 1]
            i += 1
        elif opt == b"PERSIST" and expire_arg is None and not persist:
            persist = True
        else:
            raise ERR_SYNTAX
        i += 1
    when = expire_at_ms(ctx, expire_arg, unit, b"getex") if expire_arg is not None else None
    db = ctx.db
    value = get_string(ctx, key)
    if value is None:
        return None
    reply = bytes(value)
    if when is not None:
        if when <= db.now():
            db.delete(key)
            db.effect([b"DEL", key], key)
        else:
            db.set_expire(key, when)
            db.effect([b"PEXPIREAT", key, b"%d" % when], key)
    elif persist and db.persist(key):
        db.effect([b"PERSIST", key], key)
    return reply


@command("mget", -2, "readonly fast", (1, -1, 1), "string", split=SPLIT_MGET)
def mget(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    out = []
    for key in argv[1:]:
        value = db.get(key)
        t = type(value)
        out.append(value if t is bytes else bytes(value) if t is bytearray else None)
    return out


def _mset_arity(argv: list[bytes], name: bytes) -> None:
    if len(argv) % 2 == 0:
        raise ReplyError(b"ERR wrong number of arguments for '%s' command" % name)


@command("mset", -3, "write denyoom", (1, -1, 2), "string")
def mset(ctx: Ctx, argv: list[bytes]):
    _mset_arity(argv, b"mset")
    db = ctx.db
    for i in range(1, len(argv), 2):
        db.put(argv[i], argv[i + 1])
    db.effect(argv, *argv[1::2])
    return OK


@command("msetnx", -3, "write denyoom", (1, -1, 2), "string")
def msetnx(ctx: Ctx, argv: list[bytes]):
    _mset_arity(argv, b"msetnx")
    db = ctx.db
    for i in range(1, len(argv), 2):
        if db.get(argv[i]) is not None:
            return 0
    for i in range(1, len(argv), 2):
        db.put(argv[i], argv[i + 1])
    db.effect([b"MSET"] + argv[1:], *argv[1::2])
    return 1


@command("append", 3, "write denyoom fast", (1, 1, 1), "string")
def append(ctx: Ctx, argv: list[bytes]):
    key, tail = argv[1], argv[2]
    db = ctx.db
    value = get_string(ctx, key)
    if value is None:
        db.put(key, tail)
        db.effect([b"SET", key, tail], key)
        return len(tail)
    if len(value) + len(tail) > MAX_STRING_BYTES:
        raise ERR_TOO_BIG
    if type(value) is bytes:
        value = bytearray(value)
        db.put(key, value, keep_ttl=True)
    value += tail
    db.effect(argv, key)
    return len(value)


@command("strlen", 2, "readonly fast", (1, 1, 1), "string")
def strlen(ctx: Ctx, argv: list[bytes]):
    value = get_string(ctx, argv[1])
    return 0 if value is None else len(value)


def _incr(ctx: Ctx, key: bytes, delta: int):
    db = ctx.db
    value = get_string(ctx, key)
    if value is None:
        current = 0
    else:
        current = parse_ll(bytes(value))
        if current is None:
            raise ERR_NOT_INT
    result = current + delta
    if result > LLONG_MAX or result < LLONG_MIN:
        raise ERR_OVERFLOW
    encoded = b"%d" % result
    db.put(key, encoded, keep_ttl=True)
    db.effect([b"SET", key, encoded, b"KEEPTTL"], key)
    return result


@command("incr", 2, "write denyoom fast", (1, 1, 1), "string")
def incr(ctx: Ctx, argv: list[bytes]):
    return _incr(ctx, argv[1], 1)


@command("decr", 2, "write denyoom fast", (1, 1, 1), "string")
def decr(ctx: Ctx, argv: list[bytes]):
    return _incr(ctx, argv[1], -1)


@command("incrby", 3, "write denyoom fast", (1, 1, 1), "string")
def incrby(ctx: Ctx, argv: list[bytes]):
    return _incr(ctx, argv[1], int_arg(argv[2]))


@command("decrby", 3, "write denyoom fast", (1, 1, 1), "string")
def decrby(ctx: Ctx, argv: list[bytes]):
    delta = int_arg(argv[2])
    if delta == LLONG_MIN:
        raise ReplyError(b"ERR decrement would overflow")
    return _incr(ctx, argv[1], -delta)


# INCRBYFLOAT: Redis computes in long double and prints "%.17Lf" trimmed. Exact
# decimal arithmetic rounded to 17 fractional digits gives the same text for the
# decimal inputs clients send, and is deterministic for replay.
_DECIMAL = decimal.Context(prec=6000, Emax=5000, Emin=-5000, traps=[decimal.InvalidOperation])
_QUANTUM = decimal.Decimal("1e-17")
_LDBL_MAX = decimal.Decimal("1.18973149535723176502e4932")


def _parse_decimal(text: bytes) -> decimal.Decimal | None:
    if not text or text[0] in b" \t\r\n\v\f" or text[-1] in b" \t\r\n\v\f" or b"_" in text:
        return None
    try:
        value = _DECIMAL.create_decimal(text.decode("ascii"))
    except (decimal.InvalidOperation, UnicodeDecodeError, ValueError):
        return None
    if value.is_nan():
        return None
    return value


def format_long_double(value: decimal.Decimal) -> bytes:
    """Redis' ld2string(LD_STR_HUMAN): 17 fractional digits, zeros trimmed."""
    text = format(value.quantize(_QUANTUM, context=_DECIMAL), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text.encode()


@command("incrbyfloat", 3, "write denyoom fast", (1, 1, 1), "string")
def incrbyfloat(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    db = ctx.db
    value = get_string(ctx, key)
    current = decimal.Decimal(0) if value is None else _parse_decimal(bytes(value))
    if current is None or current.is_infinite():
        raise ReplyError(b"ERR value is not a valid float")
    delta = _parse_decimal(argv[2])
    if delta is None:
        raise ReplyError(b"ERR value is not a valid float")
    if delta.is_infinite():
        raise ReplyError(b"ERR increment would produce NaN or Infinity")
    result = _DECIMAL.add(current, delta)
    if abs(result) > _LDBL_MAX:
        raise ReplyError(b"ERR increment would produce NaN or Infinity")
    encoded = format_long_double(result)
    db.put(key, encoded, keep_ttl=True)
    db.effect([b"SET", key, encoded, b"KEEPTTL"], key)
    return encoded


@command("getrange", 4, "readonly", (1, 1, 1), "string")
def getrange(ctx: Ctx, argv: list[bytes]):
    start = int_arg(argv[2])
    end = int_arg(argv[3])
    value = get_string(ctx, argv[1])
    if value is None:
        return EMPTY
    size = len(value)
    if start < 0 and end < 0 and start > end:
        return EMPTY
    if start < 0:
        start = max(size + start, 0)
    if end < 0:
        end = max(size + end, 0)
    if end >= size:
        end = size - 1
    if start > end or size == 0:
        return EMPTY
    return bytes(value[start : end + 1])


@command("substr", 4, "readonly", (1, 1, 1), "string")
def substr(ctx: Ctx, argv: list[bytes]):
    return getrange(ctx, argv)


@command("setrange", 4, "write denyoom", (1, 1, 1), "string")
def setrange(ctx: Ctx, argv: list[bytes]):
    key, patch = argv[1], argv[3]
    offset = int_arg(argv[2])
    if offset < 0:
        raise ERR_OFFSET
    db = ctx.db
    value = get_string(ctx, key)
    if value is None:
        if not patch:
            return 0
        if offset + len(patch) > MAX_STRING_BYTES:
            raise ERR_TOO_BIG
        value = bytearray(offset) + patch
        db.put(key, value)
        db.effect(argv, key)
        return len(value)
    if not patch:
        return len(value)
    if offset + len(patch) > MAX_STRING_BYTES:
        raise ERR_TOO_BIG
    if type(value) is bytes:
        value = bytearray(value)
        db.put(key, value, keep_ttl=True)
    end = offset + len(patch)
    if end > len(value):
        value.extend(bytes(end - len(value)))
    value[offset:end] = patch
    db.effect(argv, key)
    return len(value)


@command("lcs", -3, "readonly", (1, 2, 1), "string")
def lcs(ctx: Ctx, argv: list[bytes]):
    get_len = get_idx = with_match_len = False
    min_match_len = 0
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"IDX":
            get_idx = True
        elif opt == b"LEN":
            get_len = True
        elif opt == b"WITHMATCHLEN":
            with_match_len = True
        elif opt == b"MINMATCHLEN" and i + 1 < len(argv):
            min_match_len = max(int_arg(argv[i + 1]), 0)
            i += 1
        else:
            raise ERR_SYNTAX
        i += 1
    a = get_string(ctx, argv[1]) or b""
    b = get_string(ctx, argv[2]) or b""
    if get_idx and get_len:
        raise ReplyError(b"ERR If you want both the length and indexes, please just use IDX.")
    if (len(a) + 1) * (len(b) + 1) > MAX_STRING_BYTES:
        raise ReplyError(b"ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len")
    a, b = bytes(a), bytes(b)
    # dp[i][j]: LCS length of a[:i] and b[:j], rows built incrementally.
    cols = len(b) + 1
    dp = [array("I", bytes(4 * cols))]
    for i in range(1, len(a) + 1):
        prev = dp[i - 1]
        row = array("I", bytes(4 * cols))
        ai = a[i - 1]
        for j in range(1, cols):
            if ai == b[j - 1]:
                row[j] = prev[j - 1] + 1
            else:
                row[j] = prev[j] if prev[j] > row[j - 1] else row[j - 1]
        dp.append(row)
    length = dp[len(a)][len(b)]
    if get_len:
        return length
    result = bytearray(length)
    matches = []
    i, j = len(a), len(b)
    idx = length
    arange_start = arange_end = brange_start = brange_end = -1
    while i > 0 and j > 0:
        emit = False
        if a[i - 1] == b[j - 1]:
            result[idx - 1] = a[i - 1]
            if arange_start == -1:
                arange_start = arange_end = i - 1
                brange_start = brange_end = j - 1
            elif arange_start == i and brange_start == j:
                arange_start -= 1
                brange_start -= 1
            else:
                emit = True
            if arange_start == 0 or brange_start == 0:
                emit = True
            idx -= 1
            i -= 1
            j -= 1
        else:
            if dp[i - 1][j] > dp[i][j - 1]:
                i -= 1
            else:
                j -= 1
            if arange_start != -1:
                emit = True
        if emit:
            match_len = arange_end - arange_start + 1
            if get_idx and (min_match_len == 0 or match_len >= min_match_len):
                entry = [[arange_start, arange_end], [brange_start, brange_end]]
                if with_match_len:
                    entry.append(match_len)
                matches.append(entry)
            arange_start = -1
    if get_idx:
        return Map([b"matches", matches, b"len", length])
    return bytes(result)
