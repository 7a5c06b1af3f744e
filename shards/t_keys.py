"""Keyspace commands that work on any type (Redis' db.c and expire.c)."""

from __future__ import annotations

import copy
import re

from durakv.shards import notify
from durakv.shards.chunked import CHUNKED_MIN_ITEMS
from durakv.shards.args import ERR_NO_SUCH_KEY, ERR_SYNTAX, int_arg, int_range_arg
from durakv.shards.numbers import INT_MAX, INT_MIN, LLONG_MAX, parse_ll
from durakv.shards.context import Ctx
from durakv.shards.glob import compile_glob, glob_match
from durakv.shards.access import ERR_IS_LFU, ERR_NOT_LFU, idle_ms
from durakv.shards.keyspace import now_ms, type_name
from durakv.shards.resp import OK, Raw, ReplyError, Simple, encode
from durakv.shards.slots import SLOT_COUNT
from durakv.shards.table import (
    CURSOR, FANOUT, SPLIT_SUM, KeySpec, command, container, merge_arrays, merge_ok, merge_random, merge_sum,
)

SCAN_DEFAULT_COUNT = 10
SHARED_INTEGERS = 10000
OBJ_SHARED_REFCOUNT = 2147483647

# Per-type hooks filled by the type modules: OBJECT ENCODING.
ENCODINGS: dict[type, object] = {}


def _string_encoding(value: object) -> bytes:
    if type(value) is bytearray:
        return b"raw"
    if len(value) <= 20 and parse_ll(value) is not None:
        return b"int"
    return b"embstr" if len(value) <= 44 else b"raw"


ENCODINGS[bytes] = _string_encoding
ENCODINGS[bytearray] = _string_encoding


def _delete_keys(ctx: Ctx, argv: list[bytes]) -> int:
    db = ctx.db
    deleted = []
    for key in argv[1:]:
        if db.get(key) is not None:
            db.delete(key)
            deleted.append(key)
            db.notify(notify.GENERIC, b"del", key)
    if deleted:
        db.effect([b"DEL", *deleted], *deleted)
    return len(deleted)


@command("del", -2, "write", (1, -1, 1), "keyspace", split=SPLIT_SUM,
         tips=("request_policy:multi_shard", "response_policy:agg_sum"),
         key_specs=(KeySpec("RM delete", 1, -1, 1),))
def del_(ctx: Ctx, argv: list[bytes]):
    return _delete_keys(ctx, argv)


@command("unlink", -2, "write fast", (1, -1, 1), "keyspace", split=SPLIT_SUM,
         tips=("request_policy:multi_shard", "response_policy:agg_sum"),
         key_specs=(KeySpec("RM delete", 1, -1, 1),))
def unlink(ctx: Ctx, argv: list[bytes]):
    return _delete_keys(ctx, argv)


@command("exists", -2, "readonly fast", (1, -1, 1), "keyspace", split=SPLIT_SUM,
         tips=("request_policy:multi_shard", "response_policy:agg_sum"),
         key_specs=(KeySpec("RO", 1, -1, 1),))
def exists(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    return sum(1 for key in argv[1:] if db.peek(key) is not None)


@command("touch", -2, "readonly fast", (1, -1, 1), "keyspace", split=SPLIT_SUM,
         tips=("request_policy:multi_shard", "response_policy:agg_sum"),
         key_specs=(KeySpec("RO", 1, -1, 1),))
def touch(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    return sum(1 for key in argv[1:] if db.get(key) is not None)


@command("type", 2, "readonly fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def type_(ctx: Ctx, argv: list[bytes]):
    value = ctx.db.peek(argv[1])
    return Simple(b"none" if value is None else type_name(value))


# --- expiry -------------------------------------------------------------------

_EXPIRE_NX, _EXPIRE_XX, _EXPIRE_GT, _EXPIRE_LT = 1, 2, 4, 8
_EXPIRE_FLAGS = {b"NX": _EXPIRE_NX, b"XX": _EXPIRE_XX, b"GT": _EXPIRE_GT, b"LT": _EXPIRE_LT}


def _expire_generic(ctx: Ctx, argv: list[bytes], relative: bool, unit_ms: int, name: bytes):
    key = argv[1]
    flags = 0
    for opt in argv[3:]:
        flag = _EXPIRE_FLAGS.get(opt.upper())
        if flag is None:
            raise ReplyError(b"ERR Unsupported option %s" % opt)
        flags |= flag
    if flags & _EXPIRE_NX and flags & (_EXPIRE_XX | _EXPIRE_GT | _EXPIRE_LT):
        raise ReplyError(b"ERR NX and XX, GT or LT options at the same time are not compatible")
    if flags & _EXPIRE_GT and flags & _EXPIRE_LT:
        raise ReplyError(b"ERR GT and LT options at the same time are not compatible")
    when = int_arg(argv[2])
    invalid = ReplyError(b"ERR invalid expire time in '%s' command" % name)
    if unit_ms == 1000:
        if when > LLONG_MAX // 1000 or when < -(LLONG_MAX // 1000):  # C's LLONG_MIN / 1000 truncates
            raise invalid
        when *= 1000
    db = ctx.db
    if relative:
        base = db.now()
        if when > LLONG_MAX - base:
            raise invalid
        when += base
    if db.get(key) is None:
        return 0
    if flags:
        current = db.expires.get(key, -1)
        if flags & _EXPIRE_NX and current != -1:
            return 0
        if flags & _EXPIRE_XX and current == -1:
            return 0
        if flags & _EXPIRE_GT and (current == -1 or when <= current):
            return 0
        if flags & _EXPIRE_LT and current != -1 and when >= current:
            return 0
    if when <= db.now() and not db.replaying:
        db.delete(key)
        db.effect([b"DEL", key], key)
        db.notify(notify.GENERIC, b"del", key)
        return 1
    db.set_expire(key, when)
    db.effect([b"PEXPIREAT", key, b"%d" % when], key)
    db.notify(notify.GENERIC, b"expire", key)
    return 1


@command("expire", -3, "write fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RW update", 1, 0, 1),))
def expire(ctx: Ctx, argv: list[bytes]):
    return _expire_generic(ctx, argv, True, 1000, b"expire")


@command("pexpire", -3, "write fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RW update", 1, 0, 1),))
def pexpire(ctx: Ctx, argv: list[bytes]):
    return _expire_generic(ctx, argv, True, 1, b"pexpire")


@command("expireat", -3, "write fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RW update", 1, 0, 1),))
def expireat(ctx: Ctx, argv: list[bytes]):
    return _expire_generic(ctx, argv, False, 1000, b"expireat")


@command("pexpireat", -3, "write fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RW update", 1, 0, 1),))
def pexpireat(ctx: Ctx, argv: list[bytes]):
    return _expire_generic(ctx, argv, False, 1, b"pexpireat")


def _ttl_generic(ctx: Ctx, key: bytes, absolute: bool, ms: bool) -> int:
    db = ctx.db
    if db.peek(key) is None:
        return -2
    when = db.expires.get(key)
    if when is None:
        return -1
    ttl = when if absolute else max(when - db.now(), 0)
    return ttl if ms else (ttl + 500) // 1000  # Redis rounds EXPIRETIME too


@command("ttl", 2, "readonly fast", (1, 1, 1), "keyspace", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RO access", 1, 0, 1),))
def ttl(ctx: Ctx, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], False, False)


@command("pttl", 2, "readonly fast", (1, 1, 1), "keyspace", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RO access", 1, 0, 1),))
def pttl(ctx: Ctx, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], False, True)


@command("expiretime", 2, "readonly fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RO access", 1, 0, 1),))
def expiretime(ctx: Ctx, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], True, False)


@command("pexpiretime", 2, "readonly fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RO access", 1, 0, 1),))
def pexpiretime(ctx: Ctx, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], True, True)


@command("persist", 2, "write fast", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("RW update", 1, 0, 1),))
def persist(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    key = argv[1]
    if db.get(key) is None or not db.persist(key):
        return 0
    db.effect(argv, key)
    db.notify(notify.GENERIC, b"persist", key)
    return 1


# --- rename and copy ----------------------------------------------------------


def _rename(ctx: Ctx, argv: list[bytes], nx: bool):
    db = ctx.db
    src, dst = argv[1], argv[2]
    value = db.get(src)
    if value is None:
        raise ERR_NO_SUCH_KEY
    if src == dst:
        return 0 if nx else OK
    if db.get(dst) is not None:
        if nx:
            return 0
        db.delete(dst)
    when = db.expires.get(src)
    db.delete(src)
    db.put(dst, value)
    if when is not None:
        db.set_expire(dst, when)
    db.effect([b"RENAME", src, dst], src, dst, changes=1)
    db.notify(notify.GENERIC, b"rename_from", src)
    db.notify(notify.GENERIC, b"rename_to", dst)
    return 1 if nx else OK


@command("rename", 3, "write", (1, 2, 1), "keyspace",
         key_specs=(KeySpec("RW access delete", 1, 0, 1), KeySpec("OW update", 2, 0, 1)))
def rename(ctx: Ctx, argv: list[bytes]):
    return _rename(ctx, argv, False)


@command("renamenx", 3, "write fast", (1, 2, 1), "keyspace",
         key_specs=(KeySpec("RW access delete", 1, 0, 1), KeySpec("OW insert", 2, 0, 1)))
def renamenx(ctx: Ctx, argv: list[bytes]):
    return _rename(ctx, argv, True)


def copy_value(value: object) -> object:
    if type(value) is bytes:
        return value
    return copy.deepcopy(value) if hasattr(value, "deep_copy_required") else copy.copy(value)


@command("copy", -3, "write denyoom", (1, 2, 1), "keyspace",
         key_specs=(KeySpec("RO access", 1, 0, 1), KeySpec("OW update", 2, 0, 1)))
def copy_(ctx: Ctx, argv: list[bytes]):
    src, dst = argv[1], argv[2]
    replace = False
    dbid = 0
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"REPLACE":
            replace = True
        elif opt == b"DB" and i + 1 < len(argv):
            dbid = int_range_arg(argv[i + 1], INT_MIN, INT_MAX)
            i += 1
        else:
            raise ERR_SYNTAX
        i += 1
    if dbid != 0:
        raise ReplyError(b"ERR Copying to another database is not allowed in cluster mode")
    if src == dst:
        raise ReplyError(b"ERR source and destination objects are the same")
    db = ctx.db
    value = db.get(src)
    if value is None:
        return 0
    if db.get(dst) is not None:
        if not replace:
            return 0
        db.delete(dst)
    db.put(dst, copy_value(value))
    when = db.expires.get(src)
    if when is not None:
        db.set_expire(dst, when)
    db.effect([b"COPY", src, dst, b"REPLACE"], dst)
    db.notify(notify.GENERIC, b"copy_to", dst)
    return 1


# --- whole-keyspace reads (fanned out by the router) ---------------------------


@command("keys", 2, "readonly", (0, 0, 0), "keyspace", where=FANOUT,
         tips=("request_policy:all_shards", "nondeterministic_output_order"),
         acl="keyspace dangerous", merge=merge_arrays)
def keys(ctx: Ctx, argv: list[bytes]):
    """Encoded here, so the router only concatenates the shards' arrays
    (merge_arrays); the filtering loops run in C (dict iteration, re's match
    through filter), not a Python step per key."""
    pattern = argv[1]
    db = ctx.db
    found = db.live_key_list()
    if pattern != b"*":
        found = list(filter(compile_glob(pattern).match, found))
        if pattern and b"" in db.data and b"" in found:
            found.remove(b"")  # as glob_match: only the empty pattern matches an empty key
    if len(found) >= CHUNKED_MIN_ITEMS and ctx.chunks:
        return found  # a fixed list: the shard encodes it across loop turns (shards/chunked.py)
    return Raw(encode(found, 2))


@command("dbsize", 1, "readonly fast", (0, 0, 0), "server", where=FANOUT,
         tips=("request_policy:all_shards", "response_policy:agg_sum"),
         acl="keyspace", merge=merge_sum)
def dbsize(ctx: Ctx, argv: list[bytes]):
    return len(ctx.db.data)


@command("randomkey", 1, "readonly", (0, 0, 0), "keyspace", where=FANOUT,
         tips=("request_policy:all_shards", "nondeterministic_output"),
         merge=merge_random)
def randomkey(ctx: Ctx, argv: list[bytes]):
    return ctx.db.random_key()


def _flush(ctx: Ctx, argv: list[bytes]):
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise ERR_SYNTAX
    db = ctx.db
    db.flush()
    db.effect([b"FLUSHALL"])
    return OK


@command("flushall", -1, "write", (0, 0, 0), "server", where=FANOUT,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"),
         acl="keyspace dangerous", merge=merge_ok)
def flushall(ctx: Ctx, argv: list[bytes]):
    return _flush(ctx, argv)


@command("flushdb", -1, "write", (0, 0, 0), "server", where=FANOUT,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"),
         acl="keyspace dangerous", merge=merge_ok)
def flushdb(ctx: Ctx, argv: list[bytes]):
    return _flush(ctx, argv)


_STRTOUL_RE = re.compile(rb"([+-]?)([0-9]+)\Z")
ULONG_MAX = 2**64 - 1


def parse_scan_cursor(text: bytes) -> int:
    """Redis' parseScanCursorOrReply: C strtoul over the whole argument, so an
    empty cursor is 0 and "-1" wraps to ULONG_MAX; leading space or overflow
    (ERANGE) is an invalid cursor."""
    if not text:
        return 0
    m = _STRTOUL_RE.match(text)
    if m is None:
        raise ReplyError(b"ERR invalid cursor")
    value = int(m.group(2)) if len(m.group(2)) <= 40 else ULONG_MAX + 1
    if value > ULONG_MAX:
        raise ReplyError(b"ERR invalid cursor")
    return (-value) % (ULONG_MAX + 1) if m.group(1) == b"-" else value


@command("scan", -2, "readonly", (0, 0, 0), "keyspace", where=CURSOR,
         tips=("nondeterministic_output", "request_policy:special"))
def scan(ctx: Ctx, argv: list[bytes]):
    """The cursor is the next hash slot to visit, so one cursor walks every shard
    in slot order: each shard scans its own slots and hands the caller on to the
    next shard's first slot. A key present for the whole scan is returned."""
    cursor = parse_scan_cursor(argv[1])
    count = SCAN_DEFAULT_COUNT
    pattern = None
    type_filter = None
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"COUNT" and i + 1 < len(argv):
            count = int_arg(argv[i + 1])
            if count < 1:
                raise ERR_SYNTAX
        elif opt == b"MATCH" and i + 1 < len(argv):
            pattern = argv[i + 1]
        elif opt == b"TYPE" and i + 1 < len(argv):
            type_filter = argv[i + 1].lower()
        else:
            raise ERR_SYNTAX
        i += 2
    db = ctx.db
    first_slot, last_slot = ctx.shard.slot_range
    if cursor >= SLOT_COUNT:
        return [b"0", []]
    slot = max(cursor, first_slot)
    found: list[bytes] = []
    while slot <= last_slot and len(found) < count:
        found.extend(db.keys_in_slot(slot))
        slot += 1
    next_cursor = 0 if slot > last_slot and last_slot == SLOT_COUNT - 1 else slot
    result = []
    for key in found:
        value = db.peek(key)
        if value is None:
            continue
        if pattern is not None and not glob_match(pattern, key):
            continue
        if type_filter is not None and type_name(value) != type_filter:
            continue
        result.append(key)
    return [b"%d" % next_cursor, result]


# --- OBJECT -------------------------------------------------------------------

container("object", "keyspace")


@command("object|encoding", 3, "readonly", (2, 2, 1), "keyspace", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RO", 2, 0, 1),))
def object_encoding(ctx: Ctx, argv: list[bytes]):
    value = ctx.db.peek(argv[2])
    if value is None:
        return None
    return ENCODINGS[type(value)](value)


@command("object|refcount", 3, "readonly", (2, 2, 1), "keyspace", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RO", 2, 0, 1),))
def object_refcount(ctx: Ctx, argv: list[bytes]):
    value = ctx.db.peek(argv[2])
    if value is None:
        return None
    if type(value) is bytes and len(value) <= 5:
        number = parse_ll(value)
        if number is not None and 0 <= number < SHARED_INTEGERS:
            return OBJ_SHARED_REFCOUNT
    return 1


@command("object|idletime", 3, "readonly", (2, 2, 1), "keyspace", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RO", 2, 0, 1),))
def object_idletime(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    if db.peek(argv[2]) is None:
        return None
    if db.lfu is not None:
        raise ReplyError(ERR_IS_LFU)
    return idle_ms(db.stamp_of(argv[2]), db.access_stamp) // 1000  # the cron's clock, as Redis


@command("object|freq", 3, "readonly", (2, 2, 1), "keyspace", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RO", 2, 0, 1),))
def object_freq(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    if db.peek(argv[2]) is None:
        return None
    lfu = db.lfu
    if lfu is None:
        raise ReplyError(ERR_NOT_LFU)
    lfu.set_clock(now_ms())
    return lfu.counter(db.stamp_of(argv[2]))


_OBJECT_HELP = [
    b"OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"ENCODING <key>",
    b"    Return the kind of internal representation used in order to store the value",
    b"    associated with a <key>.",
    b"FREQ <key>",
    b"    Return the access frequency index of the <key>. The returned integer is",
    b"    proportional to the logarithm of the recent access frequency of the key.",
    b"IDLETIME <key>",
    b"    Return the idle time of the <key>, that is the approximated number of",
    b"    seconds elapsed since the last access to the key.",
    b"REFCOUNT <key>",
    b"    Return the number of references of the value associated with the specified",
    b"    <key>.",
    b"HELP",
    b"    Prints this help.",
]


@command("object|help", 2, "loading stale", (0, 0, 0), "keyspace")
def object_help(ctx: Ctx, argv: list[bytes]):
    return [Simple(line) for line in _OBJECT_HELP]
