"""String commands (Redis' t_string.c). Every mutation records its effect with
absolute times: SET ... EX becomes SET ... PXAT, INCRBYFLOAT becomes SET ... KEEPTTL."""

from __future__ import annotations

from array import array

from durakv.shards import notify
from durakv.shards.args import (
    ERR_NOT_FLOAT, ERR_NOT_INT, ERR_OFFSET, ERR_OVERFLOW, ERR_SYNTAX, ERR_TOO_BIG, ERR_WRONGTYPE,
    MAX_STRING_BYTES, int_arg,
)
from durakv.shards.numbers import (
    LLONG_MAX, LLONG_MIN, format_long_double, parse_ll, parse_long_double, round_long_double,
)
from durakv.shards.context import Ctx
from durakv.shards.keyspace import Keyspace
from durakv.shards.resp import OK, Map, ReplyError, fixed_error
from durakv.shards.table import SPLIT_MGET, KeySpec, arity_error, command

EMPTY = b""
STRING_TYPES = (bytes, bytearray)
LCS_MAX_CELLS = 10_000_000
ERR_NAN_OR_INF = fixed_error(b"ERR increment would produce NaN or Infinity")


def get_string(db: Keyspace, key: bytes) -> bytes | bytearray | None:
    """The string at key, None if there is no key; WRONGTYPE for another type."""
    value = db.get(key)
    if value is None:
        return None
    t = type(value)
    if t is bytes or t is bytearray:
        return value
    raise ERR_WRONGTYPE


@command("get", 2, "readonly fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RO access", 1, 0, 1),))
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

_SET_NX, _SET_XX, _SET_GET, _SET_KEEPTTL, _SET_PERSIST = 1, 2, 4, 8, 16
_UNIT_FLAGS = {b"EX": 1000, b"PX": 1, b"EXAT": -1000, b"PXAT": -1}


def parse_string_options(argv: list[bytes], for_set: bool) -> tuple[int, int, bytes | None]:
    """Redis' parseExtendedStringArgumentsOrReply for SET (for_set) and GETEX.
    Returns (flags, unit, expire argument). A unit may repeat (the last value
    wins) but two different units, or a unit with KEEPTTL/PERSIST, may not."""
    flags = 0
    unit = 0
    expire_arg = None
    i = 3 if for_set else 2
    n = len(argv)
    while i < n:
        opt = argv[i].upper()
        if opt in _UNIT_FLAGS and i + 1 < n and not flags & (_SET_KEEPTTL | _SET_PERSIST) \
                and unit in (0, _UNIT_FLAGS[opt]):
            unit = _UNIT_FLAGS[opt]
            expire_arg = argv[i + 1]
            i += 1
        elif for_set and opt == b"NX" and not flags & _SET_XX:
            flags |= _SET_NX
        elif for_set and opt == b"XX" and not flags & _SET_NX:
            flags |= _SET_XX
        elif for_set and opt == b"GET":
            flags |= _SET_GET
        elif for_set and opt == b"KEEPTTL" and not unit:
            flags |= _SET_KEEPTTL
        elif not for_set and opt == b"PERSIST" and not unit:
            flags |= _SET_PERSIST
        else:
            raise ERR_SYNTAX
        i += 1
    return flags, unit, expire_arg


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


def set_key_flags(argv: list[bytes]) -> str:
    """SET's key spec flags for one call (its variable_flags): the key is also
    read (RW access) only when GET is among the options."""
    return "RW access update" if any(a.upper() == b"GET" for a in argv[3:]) else "OW update"


@command("set", -3, "write denyoom", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update variable_flags", 1, 0, 1,
                            "RW and ACCESS due to the optional `GET` argument"),),
         key_flags_fn=set_key_flags)
def set_(ctx: Ctx, argv: list[bytes]):
    key, value = argv[1], argv[2]
    if len(argv) == 3:
        db = ctx.db
        db.put(key, value)
        db.effect(argv, key)
        if db.notify_flags:  # off by default: no call per SET
            db.notify(notify.STRING, b"set", key)
        return OK
    flags, unit, expire_arg = parse_string_options(argv, True)
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
        db.notify(notify.STRING, b"set", key)
        db.notify(notify.GENERIC, b"expire", key)
    elif keep:
        db.effect([b"SET", key, value, b"KEEPTTL"], key)
        db.notify(notify.STRING, b"set", key)
    else:
        db.effect([b"SET", key, value], key)
        db.notify(notify.STRING, b"set", key)
    return reply


@command("setnx", 3, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("OW insert", 1, 0, 1),))
def setnx(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    key = argv[1]
    if db.get(key) is not None:
        return 0
    db.put(key, argv[2])
    db.effect([b"SET", key, argv[2]], key)
    db.notify(notify.STRING, b"set", key)
    return 1


def _setex(ctx: Ctx, argv: list[bytes], unit: int, name: bytes):
    key = argv[1]
    when = expire_at_ms(ctx, argv[2], unit, name)
    db = ctx.db
    db.put(key, argv[3])
    db.set_expire(key, when)
    db.effect([b"SET", key, argv[3], b"PXAT", b"%d" % when], key)
    db.notify(notify.STRING, b"set", key)
    db.notify(notify.GENERIC, b"expire", key)
    return OK


@command("setex", 4, "write denyoom", (1, 1, 1), "string",
         key_specs=(KeySpec("OW update", 1, 0, 1),))
def setex(ctx: Ctx, argv: list[bytes]):
    return _setex(ctx, argv, 1000, b"setex")


@command("psetex", 4, "write denyoom", (1, 1, 1), "string",
         key_specs=(KeySpec("OW update", 1, 0, 1),))
def psetex(ctx: Ctx, argv: list[bytes]):
    return _setex(ctx, argv, 1, b"psetex")


@command("getset", 3, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def getset(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    old = get_string(ctx.db, key)
    ctx.db.put(key, argv[2])
    ctx.db.effect([b"SET", key, argv[2]], key)
    ctx.db.notify(notify.STRING, b"set", key)
    return bytes(old) if old is not None else None


@command("getdel", 2, "write fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access delete", 1, 0, 1),))
def getdel(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    old = get_string(ctx.db, key)
    if old is None:
        return None
    ctx.db.delete(key)
    ctx.db.effect([b"DEL", key], key)
    ctx.db.notify(notify.GENERIC, b"del", key)
    return bytes(old)


@command("getex", -2, "write fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update", 1, 0, 1, "RW and UPDATE because it changes the TTL"),))
def getex(ctx: Ctx, argv: list[bytes]):
    """Options are checked first, then the key (a missing key answers nil even
    for a bad time), then the expire value, as in Redis."""
    key = argv[1]
    flags, unit, expire_arg = parse_string_options(argv, False)
    db = ctx.db
    value = get_string(ctx.db, key)
    if value is None:
        return None
    when = expire_at_ms(ctx, expire_arg, unit, b"getex") if expire_arg is not None else None
    reply = bytes(value)
    if when is not None:
        if when <= db.now():
            db.delete(key)
            db.effect([b"DEL", key], key)
            db.notify(notify.GENERIC, b"del", key)
        else:
            db.set_expire(key, when)
            db.effect([b"PEXPIREAT", key, b"%d" % when], key)
            db.notify(notify.GENERIC, b"expire", key)
    elif flags & _SET_PERSIST and db.persist(key):
        db.effect([b"PERSIST", key], key)
        db.notify(notify.GENERIC, b"persist", key)
    return reply


@command("mget", -2, "readonly fast", (1, -1, 1), "string", split=SPLIT_MGET,
         tips=("request_policy:multi_shard",),
         key_specs=(KeySpec("RO access", 1, -1, 1),))
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
        raise arity_error(name)


@command("mset", -3, "write denyoom", (1, -1, 2), "string",
         tips=("request_policy:multi_shard", "response_policy:all_succeeded"),
         key_specs=(KeySpec("OW update", 1, -1, 2),))
def mset(ctx: Ctx, argv: list[bytes]):
    _mset_arity(argv, b"mset")
    db = ctx.db
    for i in range(1, len(argv), 2):
        db.put(argv[i], argv[i + 1])
    db.effect(argv, *argv[1::2])
    for i in range(1, len(argv), 2):
        db.notify(notify.STRING, b"set", argv[i])
    return OK


@command("msetnx", -3, "write denyoom", (1, -1, 2), "string",
         tips=("request_policy:multi_shard", "response_policy:agg_min"),
         key_specs=(KeySpec("OW insert", 1, -1, 2),))
def msetnx(ctx: Ctx, argv: list[bytes]):
    _mset_arity(argv, b"msetnx")
    db = ctx.db
    for i in range(1, len(argv), 2):
        if db.get(argv[i]) is not None:
            return 0
    for i in range(1, len(argv), 2):
        db.put(argv[i], argv[i + 1])
    db.effect([b"MSET"] + argv[1:], *argv[1::2])
    for i in range(1, len(argv), 2):
        db.notify(notify.STRING, b"set", argv[i])
    return 1


@command("append", 3, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def append(ctx: Ctx, argv: list[bytes]):
    key, tail = argv[1], argv[2]
    db = ctx.db
    value = get_string(ctx.db, key)
    if value is None:
        db.put(key, tail)
        db.effect([b"SET", key, tail], key)
        db.notify(notify.STRING, b"append", key)
        return len(tail)
    if len(value) + len(tail) > MAX_STRING_BYTES:
        raise ERR_TOO_BIG
    if type(value) is bytes:
        value = bytearray(value)
        db.put(key, value, keep_ttl=True)
    value += tail
    db.effect(argv, key)
    db.notify(notify.STRING, b"append", key)
    return len(value)


@command("strlen", 2, "readonly fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def strlen(ctx: Ctx, argv: list[bytes]):
    value = get_string(ctx.db, argv[1])
    return 0 if value is None else len(value)


def _incr(ctx: Ctx, key: bytes, delta: int):
    db = ctx.db
    value = get_string(ctx.db, key)
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
    db.notify(notify.STRING, b"incrby", key)
    return result


@command("incr", 2, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def incr(ctx: Ctx, argv: list[bytes]):
    return _incr(ctx, argv[1], 1)


@command("decr", 2, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def decr(ctx: Ctx, argv: list[bytes]):
    return _incr(ctx, argv[1], -1)


@command("incrby", 3, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def incrby(ctx: Ctx, argv: list[bytes]):
    return _incr(ctx, argv[1], int_arg(argv[2]))


@command("decrby", 3, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def decrby(ctx: Ctx, argv: list[bytes]):
    delta = int_arg(argv[2])
    if delta == LLONG_MIN:
        raise ReplyError(b"ERR decrement would overflow")
    return _incr(ctx, argv[1], -delta)


@command("incrbyfloat", 3, "write denyoom fast", (1, 1, 1), "string",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def incrbyfloat(ctx: Ctx, argv: list[bytes]):
    """Computed in emulated x86 long double, as Redis does, so the reply text
    is identical; the effect is the resulting value (replay does no arithmetic)."""
    key = argv[1]
    db = ctx.db
    value = get_string(ctx.db, key)
    current = 0 if value is None else parse_long_double(bytes(value))
    if current is None:
        raise ERR_NOT_FLOAT
    delta = parse_long_double(argv[2])
    if delta is None:
        raise ERR_NOT_FLOAT
    if type(current) is float or type(delta) is float:
        raise ERR_NAN_OR_INF
    result = round_long_double(current + delta)
    if type(result) is float:
        raise ERR_NAN_OR_INF
    encoded = format_long_double(result)
    db.put(key, encoded, keep_ttl=True)
    db.effect([b"SET", key, encoded, b"KEEPTTL"], key)
    db.notify(notify.STRING, b"incrbyfloat", key)
    return encoded


@command("getrange", 4, "readonly", (1, 1, 1), "string",
         key_specs=(KeySpec("RO access", 1, 0, 1),))
def getrange(ctx: Ctx, argv: list[bytes]):
    start = int_arg(argv[2])
    end = int_arg(argv[3])
    value = get_string(ctx.db, argv[1])
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


@command("substr", 4, "readonly", (1, 1, 1), "string",
         key_specs=(KeySpec("RO access", 1, 0, 1),))
def substr(ctx: Ctx, argv: list[bytes]):
    return getrange(ctx, argv)


@command("setrange", 4, "write denyoom", (1, 1, 1), "string",
         key_specs=(KeySpec("RW update", 1, 0, 1),))
def setrange(ctx: Ctx, argv: list[bytes]):
    key, patch = argv[1], argv[3]
    offset = int_arg(argv[2])
    if offset < 0:
        raise ERR_OFFSET
    db = ctx.db
    value = get_string(ctx.db, key)
    if value is None:
        if not patch:
            return 0
        if offset + len(patch) > MAX_STRING_BYTES:
            raise ERR_TOO_BIG
        value = bytearray(offset) + patch
        db.put(key, value)
        db.effect(argv, key)
        db.notify(notify.STRING, b"setrange", key)
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
    db.notify(notify.STRING, b"setrange", key)
    return len(value)


@command("lcs", -3, "readonly", (1, 2, 1), "string",
         key_specs=(KeySpec("RO access", 1, 1, 1),))
def lcs(ctx: Ctx, argv: list[bytes]):
    """Redis' dynamic-programming LCS. The table is bounded (LCS_MAX_CELLS):
    beyond it durakv answers Redis' out-of-memory error instead of stalling
    the shard for minutes."""
    db = ctx.db
    a = db.get(argv[1])
    b = db.get(argv[2])
    if (a is not None and type(a) not in STRING_TYPES) or (b is not None and type(b) not in STRING_TYPES):
        raise ReplyError(b"ERR The specified keys must contain string values")
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
    if get_idx and get_len:
        raise ReplyError(b"ERR If you want both the length and indexes, please just use IDX.")
    a = bytes(a) if a is not None else b""
    b = bytes(b) if b is not None else b""
    if (len(a) + 1) * (len(b) + 1) > LCS_MAX_CELLS:
        raise ReplyError(b"ERR Insufficient memory, failed allocating transient memory for LCS")
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
