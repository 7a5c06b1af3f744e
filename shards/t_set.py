"""Set commands (Redis' t_set.c).

A set is an `SetValue`: a Python set of bytes that also remembers which encoding
Redis 7.0 would be using for it (intset while every member is a canonical
integer and the set is small, hashtable otherwise, and never back), so OBJECT
ENCODING and the member order Redis shows for intsets stay faithful.

Effects: SPOP logs the SREM of the members it chose (or DEL when it took the
whole set), SRANDMEMBER never writes, and every other mutation is a pure
function of the keyspace, so it is logged exactly as it was sent.
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Iterable

from sortedcontainers import SortedList

from durakv.shards import notify
from durakv.shards.args import ERR_NUMKEYS, ERR_SYNTAX, ERR_WRONGTYPE, int_arg, int_range_arg
from durakv.shards.numbers import LONG_MAX, parse_ll
from durakv.shards.chunked import LiveItems, reads_lazily, writable
from durakv.shards.context import Ctx
from durakv.shards.glob import glob_match
from durakv.shards.keyspace import TYPE_NAMES, Keyspace
from durakv.shards.resp import ReplyError, fixed_error, SetReply
from durakv.shards.t_keys import ENCODINGS, parse_scan_cursor
from durakv.shards.table import KeySpec, command, keynum_spec, numkeys_keys

INTSET_MAX_ENTRIES_CAP = 1 << 30  # Redis caps set-max-intset-entries here
SPOP_MOVE_STRATEGY_MUL = 5  # Redis rebuilds the set when popping most of it
SCAN_DEFAULT_COUNT = 10
SCAN_HASH_MASK = (1 << 63) - 1
# A negative SRANDMEMBER/ZRANDMEMBER count repeats members, so the reply size is
# unbounded by the set; Redis streams it until the client is killed, we refuse.
RANDOM_REPLY_MAX_ITEMS = 10_000_000
# From this size on, SPOP/SRANDMEMBER keep an indexable copy of the members so a
# random pick is O(1) instead of a walk through the set.
RANDOM_INDEX_MIN_MEMBERS = 512

ERR_RANDOM_TOO_MANY = fixed_error(
    b"ERR count is too large: at most %d random members per reply" % RANDOM_REPLY_MAX_ITEMS
)
ERR_POSITIVE = fixed_error(b"ERR value is out of range, must be positive")


class SetValue(set):
    """A Redis set: members are bytes; `intset` is Redis' encoding choice.

    Two optional indexes are kept in step by add_members/remove_member once a
    command needs them: `scan_index` (hash order, for SSCAN cursors) and
    `rand_list`/`rand_pos` (positions, for O(1) random members)."""

    __slots__ = ("intset", "scan_index", "rand_list", "rand_pos")

    def __init__(self, members: Iterable[bytes] = (), intset: bool = False) -> None:
        super().__init__(members)
        self.intset = intset
        self.scan_index: SortedList | None = None
        self.rand_list: list[bytes] | None = None
        self.rand_pos: dict[bytes, int] | None = None

    def __copy__(self) -> "SetValue":
        return SetValue(self, self.intset)

    def __reduce__(self):
        return (SetValue, (list(self), self.intset))


TYPE_NAMES[SetValue] = b"set"
ENCODINGS[SetValue] = lambda value: b"intset" if value.intset else b"hashtable"


def is_int(member: bytes) -> bool:
    """Whether Redis would store member in an intset (string2ll round-trips)."""
    return parse_ll(member) is not None


def intset_max(ctx: Ctx) -> int:
    return min(ctx.shard.settings["set-max-intset-entries"], INTSET_MAX_ENTRIES_CAP)


def fits_intset(members: Iterable[bytes], size: int, limit: int) -> bool:
    return size <= limit and all(parse_ll(m) is not None for m in members)


def get_set(db: Keyspace, key: bytes) -> SetValue | None:
    """The set at key, None if there is no key; WRONGTYPE for another type."""
    value = db.get(key)
    if value is None or type(value) is SetValue:
        return value
    raise ERR_WRONGTYPE


def writable_set(db: Keyspace, key: bytes) -> SetValue | None:
    """get_set, for a command about to change the set: a copy while a big SMEMBERS
    reads it across turns (shards/chunked.py writable)."""
    s = get_set(db, key)
    return s if s is None else writable(db, key, s)


def members_in_order(s: SetValue) -> list[bytes]:
    """Members in the order Redis iterates them: ascending numbers for an intset."""
    if s.intset:
        return sorted(s, key=int)
    return list(s)


def add_members(s: SetValue, members: Iterable[bytes], limit: int) -> int:
    """setTypeAdd for each member; returns how many were new."""
    before = len(s)
    if not s.intset and s.scan_index is None and s.rand_list is None:
        s.update(members)
        return len(s) - before
    index = s.scan_index
    rand_list = s.rand_list
    for m in members:
        if m in s:
            continue
        s.add(m)
        if s.intset and (parse_ll(m) is None or len(s) > limit):
            s.intset = False
        if index is not None:
            index.add((hash(m) & SCAN_HASH_MASK, m))
        if rand_list is not None:
            s.rand_pos[m] = len(rand_list)
            rand_list.append(m)
    return len(s) - before


def remove_member(s: SetValue, member: bytes) -> bool:
    if member not in s:
        return False
    s.discard(member)
    if s.scan_index is not None:
        s.scan_index.discard((hash(member) & SCAN_HASH_MASK, member))
    rand_list = s.rand_list
    if rand_list is not None:
        where = s.rand_pos.pop(member)
        last = rand_list.pop()
        if where < len(rand_list):
            rand_list[where] = last
            s.rand_pos[last] = where
    return True


def random_population(s: SetValue) -> list[bytes] | tuple[bytes, ...]:
    """The members as a sequence to draw from: a small set is copied, a big one
    gets (or reuses) its maintained position index."""
    if len(s) < RANDOM_INDEX_MIN_MEMBERS:
        return tuple(s)
    if s.rand_list is None:
        s.rand_list = list(s)
        s.rand_pos = {m: i for i, m in enumerate(s.rand_list)}
    return s.rand_list


def random_member(s: SetValue) -> bytes:
    """A uniformly chosen member."""
    if len(s) < RANDOM_INDEX_MIN_MEMBERS:
        return next(islice(s, random.randrange(len(s)), None))
    population = random_population(s)
    return population[random.randrange(len(population))]


def new_set_from(members: Iterable[bytes], limit: int) -> SetValue:
    """A set built by adding members to an empty intset, as the STORE commands do."""
    result = SetValue(members)
    result.intset = fits_intset(result, len(result), limit)
    return result


def signed_count_arg(text: bytes) -> int:
    """The SRANDMEMBER/ZRANDMEMBER count: any long but LONG_MIN (its negation)."""
    return int_range_arg(text, -LONG_MAX, LONG_MAX)


def positive_arg(text: bytes, error: type[ReplyError] = ERR_POSITIVE) -> int:
    """getPositiveLongFromObjectOrReply: its message answers non-integers too."""
    value = parse_ll(text)
    if value is None or value < 0:
        raise error
    return value


# --- SSCAN/ZSCAN cursors ------------------------------------------------------------


def parse_scan_options(argv: list[bytes], first: int) -> tuple[int, bytes | None]:
    """COUNT and MATCH for SSCAN/HSCAN/ZSCAN; returns (count, pattern or None)."""
    count = SCAN_DEFAULT_COUNT
    pattern = None
    i = first
    n = len(argv)
    while i < n:
        opt = argv[i].lower()
        if opt == b"count" and n - i >= 2:
            count = int_arg(argv[i + 1])
            if count < 1:
                raise ERR_SYNTAX
        elif opt == b"match" and n - i >= 2:
            pattern = None if argv[i + 1] == b"*" else argv[i + 1]
        else:
            raise ERR_SYNTAX
        i += 2
    return count, pattern


def scan_page(index: SortedList, cursor: int, count: int) -> tuple[int, list[bytes]]:
    """One page of a hash-ordered scan.

    Members are visited in order of a 63-bit hash and the cursor is the next hash
    value to visit, so a member present for the whole scan is returned exactly
    once however the collection changes in between (members sharing a hash are
    always returned together). Returns (next cursor or 0, members)."""
    if cursor > SCAN_HASH_MASK:
        return 0, []
    start = index.bisect_left((cursor,))
    size = len(index)
    end = min(start + count, size)
    page = list(index.islice(start, end))
    if not page:
        return 0, []
    last_hash = page[-1][0]
    while end < size and index[end][0] == last_hash:
        page.append(index[end])
        end += 1
    return (0 if end >= size else last_hash + 1), [m for _, m in page]


def build_scan_index(members: Iterable[bytes]) -> SortedList:
    return SortedList((hash(m) & SCAN_HASH_MASK, m) for m in members)


# --- membership ---------------------------------------------------------------------


@command("sadd", -3, "write denyoom fast", (1, 1, 1), "set",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def sadd(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    db = ctx.db
    s = writable_set(db, key)
    if s is None:
        s = SetValue(intset=is_int(argv[2]))
        db.put(key, s)
    added = add_members(s, argv[2:], intset_max(ctx))
    if added:
        db.effect(argv, key, changes=added)
        db.notify(notify.SET, b"sadd", key)
    return added


@command("srem", -3, "write fast", (1, 1, 1), "set",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def srem(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    s = writable_set(ctx.db, key)
    if s is None:
        return 0
    removed = 0
    for member in argv[2:]:
        if remove_member(s, member):
            removed += 1
            if not s:
                break
    if removed:
        db = ctx.db
        if not s:
            db.delete(key)
        db.effect(argv, key, changes=removed)
        db.notify(notify.SET, b"srem", key)
        if not s:
            db.notify(notify.GENERIC, b"del", key)
    return removed


@command("smove", 4, "write fast", (1, 2, 1), "set",
         key_specs=(KeySpec("RW access delete", 1, 0, 1), KeySpec("RW insert", 2, 0, 1)))
def smove(ctx: Ctx, argv: list[bytes]):
    src_key, dst_key, member = argv[1], argv[2], argv[3]
    db = ctx.db
    src = db.get(src_key)
    dst = db.get(dst_key)
    if src is None:
        return 0
    if type(src) is not SetValue or (dst is not None and type(dst) is not SetValue):
        raise ERR_WRONGTYPE
    if src is dst:
        return 1 if member in src else 0
    if member not in src:
        return 0
    src = writable(db, src_key, src)
    remove_member(src, member)
    db.notify(notify.SET, b"srem", src_key)
    if not src:
        db.delete(src_key)
        db.notify(notify.GENERIC, b"del", src_key)
    if dst is None:
        dst = SetValue(intset=is_int(member))
        db.put(dst_key, dst)
    else:
        dst = writable(db, dst_key, dst)
    if add_members(dst, (member,), intset_max(ctx)):
        db.effect(argv, src_key, dst_key)
        db.notify(notify.SET, b"sadd", dst_key)
    else:
        db.effect(argv, src_key)  # dst already had it: a WATCH on dst stays valid
    return 1


@command("sismember", 3, "readonly fast", (1, 1, 1), "set",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def sismember(ctx: Ctx, argv: list[bytes]):
    s = get_set(ctx.db, argv[1])
    return 1 if s is not None and argv[2] in s else 0


@command("smismember", -3, "readonly fast", (1, 1, 1), "set")
def smismember(ctx: Ctx, argv: list[bytes]):
    s = get_set(ctx.db, argv[1])
    if s is None:
        return [0] * (len(argv) - 2)
    return [1 if m in s else 0 for m in argv[2:]]


@command("scard", 2, "readonly fast", (1, 1, 1), "set",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def scard(ctx: Ctx, argv: list[bytes]):
    s = get_set(ctx.db, argv[1])
    return 0 if s is None else len(s)


@command("smembers", 2, "readonly", (1, 1, 1), "set", tips=("nondeterministic_output_order",))
def smembers(ctx: Ctx, argv: list[bytes]):
    s = get_set(ctx.db, argv[1])
    if s is None:
        return SetReply([])
    if not s.intset and reads_lazily(ctx, len(s)):  # an intset's order is sorted: at once
        return SetReply(LiveItems(s, len(s), s.__iter__))  # read across turns (shards/chunked.py)
    return SetReply(members_in_order(s))


# --- random members -----------------------------------------------------------------


@command("spop", -2, "write fast", (1, 1, 1), "set", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RW access delete", 1, 0, 1),))
def spop(ctx: Ctx, argv: list[bytes]):
    if len(argv) > 3:
        raise ERR_SYNTAX
    key = argv[1]
    db = ctx.db
    if len(argv) == 3:
        return _spop_count(ctx, key, positive_arg(argv[2]))
    s = writable_set(db, key)
    if s is None:
        return None
    member = random_member(s)
    remove_member(s, member)
    db.notify(notify.SET, b"spop", key)
    if not s:
        db.delete(key)
        db.notify(notify.GENERIC, b"del", key)
    db.effect([b"SREM", key, member], key)
    return member


def _spop_count(ctx: Ctx, key: bytes, count: int) -> SetReply:
    db = ctx.db
    s = writable_set(db, key)
    if s is None or count == 0:
        return SetReply([])
    size = len(s)
    db.notify(notify.SET, b"spop", key)
    if count >= size:
        members = members_in_order(s)
        db.delete(key)
        db.notify(notify.GENERIC, b"del", key)
        db.effect([b"DEL", key], key, changes=len(members))
        return SetReply(members)
    chosen = random.sample(random_population(s), count)
    for member in chosen:
        remove_member(s, member)
    if (size - count) * SPOP_MOVE_STRATEGY_MUL <= count:
        # Redis builds a fresh set from the survivors here, re-choosing its encoding.
        s.intset = fits_intset(s, len(s), intset_max(ctx))
    db.effect([b"SREM", key, *chosen], key, changes=len(chosen))
    return SetReply(chosen)


@command("srandmember", -2, "readonly", (1, 1, 1), "set", tips=("nondeterministic_output",))
def srandmember(ctx: Ctx, argv: list[bytes]):
    if len(argv) > 3:
        raise ERR_SYNTAX
    if len(argv) == 2:
        s = get_set(ctx.db, argv[1])
        return None if s is None else random_member(s)
    count = signed_count_arg(argv[2])
    s = get_set(ctx.db, argv[1])
    if s is None or count == 0:
        return []
    if count < 0 or count == 1:
        count = abs(count)
        if count > RANDOM_REPLY_MAX_ITEMS:
            raise ERR_RANDOM_TOO_MANY
        if count == 1:
            return [random_member(s)]
        return random.choices(random_population(s), k=count)
    if count >= len(s):
        return members_in_order(s)
    return random.sample(random_population(s), count)


# --- algebra ------------------------------------------------------------------------


def _lookup_sets(ctx: Ctx, keys: list[bytes]) -> list[SetValue | None]:
    """Every operand (None for a missing key); WRONGTYPE if any has another type."""
    db = ctx.db
    sets = []
    for key in keys:
        value = db.get(key)
        if value is not None and type(value) is not SetValue:
            raise ERR_WRONGTYPE
        sets.append(value)
    return sets


def _store(ctx: Ctx, argv: list[bytes], dst_key: bytes, result: SetValue) -> int:
    """Replace dst with result (deleting dst when result is empty), as setKey does:
    any type and any TTL of the old value go."""
    db = ctx.db
    if result:
        db.put(dst_key, result)
        db.effect(argv, dst_key)
        db.notify(notify.SET, argv[0].lower(), dst_key)  # sinterstore, sunionstore, sdiffstore
        return len(result)
    if db.get(dst_key) is not None:
        db.delete(dst_key)
        db.effect(argv, dst_key)
        db.notify(notify.GENERIC, b"del", dst_key)
    return 0


def _intersection(sets: list[SetValue], limit: int = 0) -> tuple[list[bytes], bool]:
    """Members of every set, iterating the smallest (in Redis' order); the flag says
    whether that smallest set is an intset (its members then come out sorted)."""
    ordered = sorted(sets, key=len)
    smallest = ordered[0]
    others = [s for s in ordered[1:] if s is not smallest]
    out = []
    for member in members_in_order(smallest):
        if all(member in s for s in others):
            out.append(member)
            if limit and len(out) >= limit:
                break
    return out, smallest.intset


def sinter_generic(ctx: Ctx, keys: list[bytes], dst_argv: list[bytes] | None = None):
    sets = _lookup_sets(ctx, keys)
    if any(s is None for s in sets):
        members: list[bytes] = []
    else:
        members, _ = _intersection(sets)
    if dst_argv is not None:
        return _store(ctx, dst_argv, dst_argv[1], new_set_from(members, intset_max(ctx)))
    return SetReply(members)


@command("sinter", -2, "readonly", (1, -1, 1), "set", tips=("nondeterministic_output_order",))
def sinter(ctx: Ctx, argv: list[bytes]):
    return sinter_generic(ctx, argv[1:])


@command("sinterstore", -3, "write denyoom", (1, -1, 1), "set",
         key_specs=(KeySpec("RW update", 1, 0, 1), KeySpec("RO access", 2, -1, 1)))
def sinterstore(ctx: Ctx, argv: list[bytes]):
    return sinter_generic(ctx, argv[2:], argv)


ERR_NUMKEYS_ARGS = fixed_error(b"ERR Number of keys can't be greater than number of args")
ERR_LIMIT_NEGATIVE = fixed_error(b"ERR LIMIT can't be negative")


@command("sintercard", -3, "readonly", (0, 0, 0), "set", keys_fn=numkeys_keys(1),
         key_specs=(keynum_spec("RO access", 1, 0, 1, 1),))
def sintercard(ctx: Ctx, argv: list[bytes]):
    numkeys = parse_ll(argv[1])
    if numkeys is None or numkeys < 1:
        raise ERR_NUMKEYS
    if numkeys > len(argv) - 2:
        raise ERR_NUMKEYS_ARGS
    limit = 0
    i = 2 + numkeys
    while i < len(argv):
        if argv[i].lower() == b"limit" and i + 1 < len(argv):
            limit = positive_arg(argv[i + 1], ERR_LIMIT_NEGATIVE)
            i += 2
        else:
            raise ERR_SYNTAX
    sets = _lookup_sets(ctx, argv[2 : 2 + numkeys])
    if any(s is None for s in sets):
        return 0
    members, _ = _intersection(sets, limit)
    return len(members)


def _union(sets: list[SetValue | None]) -> SetValue:
    result = SetValue()
    for s in sets:
        if s is not None:
            result |= s
    return result


def _difference(sets: list[SetValue | None], limit: int) -> SetValue:
    """SDIFF, with the encoding Redis' chosen algorithm leaves on the result: the
    second algorithm first copies the whole first set, converting to hashtable if
    that set does not fit an intset, and the conversion sticks."""
    first = sets[0]
    if first is None or any(s is first for s in sets[1:]):
        return SetValue(intset=True)
    result = SetValue(first)
    for s in sets[1:]:
        if s is not None:
            result -= s
    present = [s for s in sets if s is not None]
    algo_one_work = len(first) * len(present) // 2
    algo_two_work = sum(len(s) for s in present)
    through_first = algo_one_work > algo_two_work
    result.intset = fits_intset(result, len(result), limit) and (
        not through_first or fits_intset(first, len(first), limit)
    )
    return result


def sunion_diff_generic(ctx: Ctx, keys: list[bytes], diff: bool, dst_argv: list[bytes] | None = None):
    sets = _lookup_sets(ctx, keys)
    limit = intset_max(ctx)
    if diff:
        result = _difference(sets, limit)
    else:
        result = _union(sets)
        result.intset = fits_intset(result, len(result), limit)
    if dst_argv is not None:
        return _store(ctx, dst_argv, dst_argv[1], result)
    return SetReply(members_in_order(result))


@command("sunion", -2, "readonly", (1, -1, 1), "set", tips=("nondeterministic_output_order",))
def sunion(ctx: Ctx, argv: list[bytes]):
    return sunion_diff_generic(ctx, argv[1:], False)


@command("sunionstore", -3, "write denyoom", (1, -1, 1), "set",
         key_specs=(KeySpec("OW update", 1, 0, 1), KeySpec("RO access", 2, -1, 1)))
def sunionstore(ctx: Ctx, argv: list[bytes]):
    return sunion_diff_generic(ctx, argv[2:], False, argv)


@command("sdiff", -2, "readonly", (1, -1, 1), "set", tips=("nondeterministic_output_order",))
def sdiff(ctx: Ctx, argv: list[bytes]):
    return sunion_diff_generic(ctx, argv[1:], True)


@command("sdiffstore", -3, "write denyoom", (1, -1, 1), "set",
         key_specs=(KeySpec("OW update", 1, 0, 1), KeySpec("RO access", 2, -1, 1)))
def sdiffstore(ctx: Ctx, argv: list[bytes]):
    return sunion_diff_generic(ctx, argv[2:], True, argv)


# --- SSCAN --------------------------------------------------------------------------


@command("sscan", -3, "readonly", (1, 1, 1), "set", tips=("nondeterministic_output",))
def sscan(ctx: Ctx, argv: list[bytes]):
    cursor = parse_scan_cursor(argv[2])
    s = get_set(ctx.db, argv[1])
    if s is None:
        return [b"0", []]
    count, pattern = parse_scan_options(argv, 3)
    if s.intset:
        next_cursor, members = 0, members_in_order(s)
    else:
        if s.scan_index is None:
            s.scan_index = build_scan_index(s)
        next_cursor, members = scan_page(s.scan_index, cursor, count)
        if next_cursor == 0:
            s.scan_index = None
    if pattern is not None:
        members = [m for m in members if glob_match(pattern, m)]
    return [b"%d" % next_cursor, members]
