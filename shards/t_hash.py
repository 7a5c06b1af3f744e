"""Hash commands (Redis 7.0's t_hash.c).

A hash is a `HashValue`: a dict of bytes field -> bytes value whose iteration
order is insertion order, which is also the order of Redis' listpack encoding.
It records Redis' sticky listpack -> hashtable conversion so OBJECT ENCODING
answers as Redis would: a hash converts when a field or value longer than
hash-max-listpack-value is stored or when it grows past
hash-max-listpack-entries, and never converts back.

HSCAN's cursor over a hashtable-encoded hash is a position in the 64-bit space
of field hashes: each call returns every field whose hash lies in
[cursor, next cursor), in hash order, so a field present for the whole scan is
returned exactly once however the hash changes in between. The hash-ordered
index is built on the first such HSCAN and kept up to date afterwards.

Effects: HINCRBY and HINCRBYFLOAT log HSET of the resulting value (no float
arithmetic in replay), HMSET and HSETNX log HSET, HDEL logs the fields it
actually removed.
"""

from __future__ import annotations

import random
from itertools import chain, islice

from sortedcontainers import SortedList

from durakv.shards import notify
from durakv.shards.args import ERR_NOT_FLOAT, ERR_NOT_INT, ERR_OVERFLOW, ERR_SYNTAX, ERR_WRONGTYPE, int_arg
from durakv.shards.numbers import (
    LLONG_MAX, LLONG_MIN, format_long_double, parse_ll, parse_long_double, round_long_double,
)
from durakv.shards.chunked import LiveItems, reads_lazily, writable
from durakv.shards.context import Ctx
from durakv.shards.glob import glob_match
from durakv.shards.keyspace import TYPE_NAMES, Keyspace
from durakv.shards.resp import OK, Map, fixed_error
from durakv.shards.t_keys import ENCODINGS
from durakv.shards.table import KeySpec, arity_error, command

HASH_MASK = 2**64 - 1
SCAN_DEFAULT_COUNT = 10
# A negative HRANDFIELD count asks for that many picks with repetition; Redis
# 7.0 has no bound and would build any reply. This bound keeps one request from
# exhausting the shard's memory.
MAX_RANDOM_PICKS = 10_000_000

ERR_HASH_NOT_INT = fixed_error(b"ERR hash value is not an integer")
ERR_HASH_NOT_FLOAT = fixed_error(b"ERR hash value is not a float")
ERR_NAN_OR_INF = fixed_error(b"ERR value is NaN or Infinity")
ERR_INCR_NAN_OR_INF = fixed_error(b"ERR increment would produce NaN or Infinity")
ERR_OUT_OF_RANGE = fixed_error(b"ERR value is out of range")
ERR_RANDFIELD_RANGE = fixed_error(
    b"ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807"
)
ERR_INVALID_CURSOR = fixed_error(b"ERR invalid cursor")


def _scan_hash(field: bytes) -> int:
    return hash(field) & HASH_MASK


class HashValue(dict):
    """A Redis hash. Mutate it only through set_field/del_field, which keep
    the encoding flag and the HSCAN index right."""

    __slots__ = ("table", "_scan_index")

    def __init__(self) -> None:
        super().__init__()
        self.table = False  # True once Redis would have converted it to a hashtable
        self._scan_index: SortedList | None = None

    def __copy__(self) -> "HashValue":
        new = HashValue()
        new.update(self)
        new.table = self.table
        return new

    def set_field(self, field: bytes, value: bytes, max_entries: int, max_value: int) -> bool:
        """Store field = value; True if the field is new."""
        if not self.table and (len(field) > max_value or len(value) > max_value):
            self.table = True
        size = len(self)
        self[field] = value
        if len(self) == size:
            return False
        if not self.table and size + 1 > max_entries:
            self.table = True
        index = self._scan_index
        if index is not None:
            index.add((_scan_hash(field), field))
        return True

    def del_field(self, field: bytes) -> bool:
        """Remove field; True if it was there."""
        if field not in self:
            return False
        del self[field]
        index = self._scan_index
        if index is not None:
            index.remove((_scan_hash(field), field))
        return True

    def scan_index(self) -> SortedList:
        """(field hash, field) pairs in hash order, built on first use."""
        index = self._scan_index
        if index is None:
            index = self._scan_index = SortedList((_scan_hash(f), f) for f in self)
        return index


TYPE_NAMES[HashValue] = b"hash"
ENCODINGS[HashValue] = lambda value: b"hashtable" if value.table else b"listpack"


def get_hash(db: Keyspace, key: bytes) -> HashValue | None:
    """The hash at key, None if there is no key; WRONGTYPE for another type."""
    value = db.get(key)
    if value is None or type(value) is HashValue:
        return value
    raise ERR_WRONGTYPE


def _hash_for_write(ctx: Ctx, key: bytes) -> HashValue:
    """The hash at key, created (empty, not yet stored) when missing. Callers
    store it with db.put only once a field is set, so no empty hash is left
    behind by an error. A copy while a big reply reads the hash across turns
    (shards/chunked.py writable)."""
    value = get_hash(ctx.db, key)
    return HashValue() if value is None else writable(ctx.db, key, value)


def _limits(ctx: Ctx) -> tuple[int, int]:
    settings = ctx.shard.settings
    return settings["hash-max-listpack-entries"], settings["hash-max-listpack-value"]


def _store_if_new(ctx: Ctx, key: bytes, h: HashValue) -> None:
    if ctx.db.data.get(key) is not h:
        ctx.db.put(key, h)


# --- writes ---------------------------------------------------------------------


def _hset(ctx: Ctx, argv: list[bytes], name: bytes) -> int:
    if len(argv) % 2:
        raise arity_error(name)
    key = argv[1]
    h = _hash_for_write(ctx, key)
    max_entries, max_value = _limits(ctx)
    set_field = h.set_field
    created = 0
    for i in range(2, len(argv), 2):
        created += set_field(argv[i], argv[i + 1], max_entries, max_value)
    _store_if_new(ctx, key, h)
    ctx.db.effect(argv if name == b"hset" else [b"HSET", *argv[1:]], key, changes=(len(argv) - 2) // 2)
    ctx.db.notify(notify.HASH, b"hset", key)
    return created


@command("hset", -4, "write denyoom fast", (1, 1, 1), "hash")
def hset(ctx: Ctx, argv: list[bytes]):
    return _hset(ctx, argv, b"hset")


@command("hmset", -4, "write denyoom fast", (1, 1, 1), "hash")
def hmset(ctx: Ctx, argv: list[bytes]):
    _hset(ctx, argv, b"hmset")
    return OK


@command("hsetnx", 4, "write denyoom fast", (1, 1, 1), "hash",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def hsetnx(ctx: Ctx, argv: list[bytes]):
    key, field, value = argv[1], argv[2], argv[3]
    h = _hash_for_write(ctx, key)
    if field in h:
        return 0
    h.set_field(field, value, *_limits(ctx))
    _store_if_new(ctx, key, h)
    ctx.db.effect([b"HSET", key, field, value], key)
    ctx.db.notify(notify.HASH, b"hset", key)
    return 1


@command("hdel", -3, "write fast", (1, 1, 1), "hash",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def hdel(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    db = ctx.db
    h = get_hash(db, key)
    if h is None:
        return 0
    h = writable(db, key, h)
    deleted = [field for field in argv[2:] if h.del_field(field)]
    if not deleted:
        return 0
    if not h:
        db.delete(key)
    db.effect([b"HDEL", key, *deleted], key, changes=len(deleted))
    db.notify(notify.HASH, b"hdel", key)
    if not h:
        db.notify(notify.GENERIC, b"del", key)
    return len(deleted)


def _set_result(ctx: Ctx, key: bytes, h: HashValue, field: bytes, value: bytes) -> None:
    h.set_field(field, value, *_limits(ctx))
    _store_if_new(ctx, key, h)
    ctx.db.effect([b"HSET", key, field, value], key)


@command("hincrby", 4, "write denyoom fast", (1, 1, 1), "hash",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def hincrby(ctx: Ctx, argv: list[bytes]):
    key, field = argv[1], argv[2]
    delta = int_arg(argv[3])
    h = _hash_for_write(ctx, key)
    old = h.get(field)
    current = 0 if old is None else parse_ll(old)
    if current is None:
        raise ERR_HASH_NOT_INT
    result = current + delta
    if result > LLONG_MAX or result < LLONG_MIN:
        raise ERR_OVERFLOW
    _set_result(ctx, key, h, field, b"%d" % result)
    ctx.db.notify(notify.HASH, b"hincrby", key)
    return result


@command("hincrbyfloat", 4, "write denyoom fast", (1, 1, 1), "hash",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def hincrbyfloat(ctx: Ctx, argv: list[bytes]):
    """Computed in emulated long double like Redis, so the reply text matches."""
    key, field = argv[1], argv[2]
    delta = parse_long_double(argv[3])
    if delta is None:
        raise ERR_NOT_FLOAT
    if type(delta) is float:
        raise ERR_NAN_OR_INF
    h = _hash_for_write(ctx, key)
    old = h.get(field)
    current = 0 if old is None else parse_long_double(old)
    if current is None:
        raise ERR_HASH_NOT_FLOAT
    if type(current) is float:
        raise ERR_INCR_NAN_OR_INF
    result = round_long_double(current + delta)
    if type(result) is float:
        raise ERR_INCR_NAN_OR_INF
    encoded = format_long_double(result)
    _set_result(ctx, key, h, field, encoded)
    ctx.db.notify(notify.HASH, b"hincrbyfloat", key)
    return encoded


# --- reads ----------------------------------------------------------------------


@command("hget", 3, "readonly fast", (1, 1, 1), "hash")
def hget(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    return None if h is None else h.get(argv[2])


@command("hmget", -3, "readonly fast", (1, 1, 1), "hash")
def hmget(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    if h is None:
        return [None] * (len(argv) - 2)
    get = h.get
    return [get(field) for field in argv[2:]]


@command("hexists", 3, "readonly fast", (1, 1, 1), "hash",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def hexists(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    return 1 if h is not None and argv[2] in h else 0


@command("hlen", 2, "readonly fast", (1, 1, 1), "hash",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def hlen(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    return 0 if h is None else len(h)


@command("hstrlen", 3, "readonly fast", (1, 1, 1), "hash",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def hstrlen(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    value = None if h is None else h.get(argv[2])
    return 0 if value is None else len(value)


@command("hkeys", 2, "readonly", (1, 1, 1), "hash", tips=("nondeterministic_output_order",))
def hkeys(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    if h is not None and reads_lazily(ctx, len(h)):
        return LiveItems(h, len(h), h.__iter__)  # read across turns (shards/chunked.py)
    return [] if h is None else list(h)


@command("hvals", 2, "readonly", (1, 1, 1), "hash", tips=("nondeterministic_output_order",))
def hvals(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    if h is not None and reads_lazily(ctx, len(h)):
        return LiveItems(h, len(h), lambda: iter(h.values()))
    return [] if h is None else list(h.values())


@command("hgetall", 2, "readonly", (1, 1, 1), "hash", tips=("nondeterministic_output_order",))
def hgetall(ctx: Ctx, argv: list[bytes]):
    h = get_hash(ctx.db, argv[1])
    if h is not None and reads_lazily(ctx, len(h)):
        return Map(LiveItems(h, 2 * len(h), lambda: chain.from_iterable(h.items())))
    return Map([] if h is None else list(chain.from_iterable(h.items())))


# --- HRANDFIELD -----------------------------------------------------------------


@command("hrandfield", -2, "readonly", (1, 1, 1), "hash", tips=("nondeterministic_output",))
def hrandfield(ctx: Ctx, argv: list[bytes]):
    """Random picks never write, so nothing is logged."""
    if len(argv) == 2:
        h = get_hash(ctx.db, argv[1])
        if h is None:
            return None
        return next(islice(h, random.randrange(len(h)), None))
    count = parse_ll(argv[2])
    if count is None:
        raise ERR_NOT_INT
    if count == LLONG_MIN:
        raise ERR_RANDFIELD_RANGE
    if len(argv) > 4 or (len(argv) == 4 and argv[3].lower() != b"withvalues"):
        raise ERR_SYNTAX
    with_values = len(argv) == 4
    if with_values and abs(count) > LLONG_MAX // 2:
        raise ERR_OUT_OF_RANGE
    h = get_hash(ctx.db, argv[1])
    if h is None or count == 0:
        return []
    if count < 0 or count == 1:
        picks = -count if count < 0 else 1
        if picks > MAX_RANDOM_PICKS:
            raise ERR_OUT_OF_RANGE
        if picks == 1:
            fields = [next(islice(h, random.randrange(len(h)), None))]
        else:
            fields = random.choices(list(h), k=picks)
    elif count >= len(h):
        fields = list(h)
    else:
        fields = random.sample(list(h), count)
    if not with_values:
        return fields
    if ctx.proto == 3:
        return [[field, h[field]] for field in fields]
    return [x for field in fields for x in (field, h[field])]


# --- HSCAN ----------------------------------------------------------------------


def parse_cursor(text: bytes) -> int:
    """Redis' parseScanCursorOrReply (strtoul, base 10): optional sign, digits,
    no leading space, wraps negatives, refuses values beyond 64 bits."""
    if text[:1].isspace():
        raise ERR_INVALID_CURSOR
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    if not digits:
        if text:
            raise ERR_INVALID_CURSOR
        return 0
    if not digits.isdigit():
        raise ERR_INVALID_CURSOR
    value = int(digits)
    if value > HASH_MASK:
        raise ERR_INVALID_CURSOR
    return (-value) & HASH_MASK if text[:1] == b"-" else value


def _scan_options(argv: list[bytes]) -> tuple[int, bytes | None]:
    count = SCAN_DEFAULT_COUNT
    pattern = None
    i = 3
    while i < len(argv):
        opt = argv[i].lower()
        if i + 1 >= len(argv):
            raise ERR_SYNTAX
        if opt == b"count":
            count = int_arg(argv[i + 1])
            if count < 1:
                raise ERR_SYNTAX
        elif opt == b"match":
            pattern = argv[i + 1]
            if pattern == b"*":
                pattern = None
        else:
            raise ERR_SYNTAX
        i += 2
    return count, pattern


def _scan_fields(h: HashValue, cursor: int, count: int) -> tuple[int, list[bytes]]:
    """About `count` fields from hash position `cursor` on, never splitting a
    group of fields with the same hash; returns (next cursor, fields)."""
    index = h.scan_index()
    start = index.bisect_left((cursor,))
    picked = list(index.islice(start, start + count))
    end = start + len(picked)
    size = len(index)
    while picked and end < size and index[end][0] == picked[-1][0]:
        picked.append(index[end])
        end += 1
    if end >= size or picked[-1][0] == HASH_MASK:
        return 0, [field for _, field in picked]
    return picked[-1][0] + 1, [field for _, field in picked]


@command("hscan", -3, "readonly", (1, 1, 1), "hash", tips=("nondeterministic_output",))
def hscan(ctx: Ctx, argv: list[bytes]):
    cursor = parse_cursor(argv[2])
    h = get_hash(ctx.db, argv[1])
    if h is None:
        return [b"0", []]
    count, pattern = _scan_options(argv)
    if h.table:
        next_cursor, fields = _scan_fields(h, cursor, count)
    else:
        next_cursor, fields = 0, list(h)
    out = []
    for field in fields:
        if pattern is None or glob_match(pattern, field):
            out.append(field)
            out.append(h[field])
    return [b"%d" % next_cursor, out]
