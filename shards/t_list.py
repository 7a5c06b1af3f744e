"""List commands (Redis 7.0's t_list.c), except the blocking variants.

A list is a `ListValue` (a deque: O(1) at both ends, which is what lists are
used for). Redis 7.0 stores every list as a quicklist whatever its size, so
OBJECT ENCODING always answers "quicklist" (the small-list listpack encoding
arrived in 7.2).

Effects are deterministic commands: pushes log LPUSH/RPUSH, pops log LPOP/RPOP
with the number of elements actually popped, moves log LMOVE. A key emptied by
a pop is deleted, and replaying the pop empties (and deletes) it too.

The pop and move primitives (`list_pop`, `list_mpop`, `list_move`,
`parse_mpop_args`) are plain functions so the blocking commands can reuse them.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from durakv.shards import notify
from durakv.shards.args import (
    ERR_INDEX, ERR_NOT_INT, ERR_NO_SUCH_KEY, ERR_SYNTAX, ERR_WRONGTYPE, parse_numkeys_side_count,
)
from durakv.shards.numbers import LLONG_MIN, parse_ll
from durakv.shards.chunked import DequeRange, reads_lazily, writable
from durakv.shards.context import Ctx
from durakv.shards.keyspace import TYPE_NAMES, Keyspace
from durakv.shards.resp import NULL_ARRAY, OK, ReplyError, fixed_error
from durakv.shards.t_keys import ENCODINGS
from durakv.shards.table import KeySpec, arity_error, command, keynum_spec, numkeys_keys

LIST_HEAD = 0
LIST_TAIL = 1
_MPOP_SIDES = {b"LEFT": LIST_HEAD, b"RIGHT": LIST_TAIL}
_POP_NAMES = (b"LPOP", b"RPOP")
_PUSH_NAMES = (b"LPUSH", b"RPUSH")
_SIDE_NAMES = (b"LEFT", b"RIGHT")

ERR_POSITIVE = fixed_error(b"ERR value is out of range, must be positive")
ERR_RANK_ZERO = fixed_error(
    b"ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... "
    b"or use negative to start from the end of the list"
)
ERR_COUNT_NEGATIVE = fixed_error(b"ERR COUNT can't be negative")
ERR_MAXLEN_NEGATIVE = fixed_error(b"ERR MAXLEN can't be negative")


class ListValue(deque):
    """A Redis list of bytes elements."""

    __slots__ = ()

    def __copy__(self) -> "ListValue":
        return ListValue(self)

    def canonical(self) -> list[bytes]:
        return list(self)


TYPE_NAMES[ListValue] = b"list"
ENCODINGS[ListValue] = lambda value: b"quicklist"


def get_list(db: Keyspace, key: bytes) -> ListValue | None:
    """The list at key, None if there is no key; WRONGTYPE for another type."""
    value = db.get(key)
    if value is None or type(value) is ListValue:
        return value
    raise ERR_WRONGTYPE


def writable_list(db: Keyspace, key: bytes) -> ListValue | None:
    """get_list, for a command about to change the list: while a big LRANGE reply is
    read from it across turns (shards/chunked.py DequeRange), the key gets a copy,
    which the command changes; the reply keeps the list as it was."""
    lst = get_list(db, key)
    return lst if lst is None else writable(db, key, lst)


def parse_where(arg: bytes) -> int:
    """LEFT/RIGHT (any case) as LIST_HEAD/LIST_TAIL."""
    side = arg.upper()
    if side == b"LEFT":
        return LIST_HEAD
    if side == b"RIGHT":
        return LIST_TAIL
    raise ERR_SYNTAX


def _index_arg(text: bytes) -> int:
    value = parse_ll(text)
    if value is None:
        raise ERR_NOT_INT
    return value


def _positive_arg(text: bytes, error: type[ReplyError]) -> int:
    """Redis' getPositiveLongFromObjectOrReply: 0..LONG_MAX, one message for both failures."""
    value = parse_ll(text)
    if value is None or value < 0:
        raise error
    return value


# --- primitives shared with the blocking commands -------------------------------


def list_pop(ctx: Ctx, key: bytes, where: int, count: int) -> list[bytes] | None:
    """Pop up to `count` (>= 1) elements from one end of the list at key, in pop
    order. None when there is no such key; WRONGTYPE for another type. Logs
    LPOP/RPOP key n and deletes the key when it becomes empty."""
    db = ctx.db
    lst = writable_list(db, key)
    if lst is None:
        return None
    n = min(count, len(lst))
    pop = lst.popleft if where == LIST_HEAD else lst.pop
    popped = [pop() for _ in range(n)]
    if not lst:
        db.delete(key)
    db.effect([_POP_NAMES[where], key, b"%d" % n], key, changes=n)
    db.notify(notify.LIST, _POP_NAMES[where].lower(), key)
    if not lst:
        db.notify(notify.GENERIC, b"del", key)
    return popped


def list_mpop(ctx: Ctx, keys: list[bytes], where: int, count: int) -> list | None:
    """LMPOP's work: pop from the first non-empty list among keys. Returns
    [key, [elements]] or None when none of the keys exists."""
    for key in keys:
        popped = list_pop(ctx, key, where, count)
        if popped is not None:
            return [key, popped]
    return None


def list_move(ctx: Ctx, src: bytes, dst: bytes, wherefrom: int, whereto: int) -> bytes | None:
    """LMOVE's work: pop from src's `wherefrom` end, push on dst's `whereto` end.
    None when src does not exist. Both types are checked before anything moves.
    Logs LMOVE src dst LEFT|RIGHT LEFT|RIGHT."""
    db = ctx.db
    source = writable_list(db, src)
    if source is None:
        return None
    dest = source if dst == src else writable_list(db, dst)
    value = source.popleft() if wherefrom == LIST_HEAD else source.pop()
    if dest is None:
        dest = ListValue()
        db.put(dst, dest)
    if whereto == LIST_HEAD:
        dest.appendleft(value)
    else:
        dest.append(value)
    if not source:
        db.delete(src)
    db.effect([b"LMOVE", src, dst, _SIDE_NAMES[wherefrom], _SIDE_NAMES[whereto]], src, dst, changes=1)
    db.notify(notify.LIST, _PUSH_NAMES[whereto].lower(), dst)
    db.notify(notify.LIST, _POP_NAMES[wherefrom].lower(), src)
    if not source:
        db.notify(notify.GENERIC, b"del", src)
    return value


def parse_mpop_args(argv: list[bytes], numkeys_index: int) -> tuple[list[bytes], int, int]:
    """Parse `numkeys key [key ...] LEFT|RIGHT [COUNT count]` starting at
    numkeys_index (1 for LMPOP, 2 for BLMPOP): (keys, where, count)."""
    return parse_numkeys_side_count(argv, numkeys_index, _MPOP_SIDES)


# --- push -----------------------------------------------------------------------


def _push(ctx: Ctx, argv: list[bytes], where: int, only_existing: bool) -> int:
    key = argv[1]
    db = ctx.db
    lst = writable_list(db, key)
    if lst is None:
        if only_existing:
            return 0
        lst = ListValue()
        db.put(key, lst)
    elements = argv[2:]
    if where == LIST_HEAD:
        lst.extendleft(elements)
    else:
        lst.extend(elements)
    db.effect(argv if not only_existing else [_PUSH_NAMES[where], key, *elements], key, changes=len(elements))
    db.notify(notify.LIST, _PUSH_NAMES[where].lower(), key)
    return len(lst)


@command("lpush", -3, "write denyoom fast", (1, 1, 1), "list",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def lpush(ctx: Ctx, argv: list[bytes]):
    return _push(ctx, argv, LIST_HEAD, False)


@command("rpush", -3, "write denyoom fast", (1, 1, 1), "list",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def rpush(ctx: Ctx, argv: list[bytes]):
    return _push(ctx, argv, LIST_TAIL, False)


@command("lpushx", -3, "write denyoom fast", (1, 1, 1), "list",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def lpushx(ctx: Ctx, argv: list[bytes]):
    return _push(ctx, argv, LIST_HEAD, True)


@command("rpushx", -3, "write denyoom fast", (1, 1, 1), "list",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def rpushx(ctx: Ctx, argv: list[bytes]):
    return _push(ctx, argv, LIST_TAIL, True)


# --- pop and move ---------------------------------------------------------------


def _pop_command(ctx: Ctx, argv: list[bytes], where: int):
    """LPOP/RPOP: without a count a bulk (or null); with one an array, or a null
    array when the key is missing, and an empty array for count 0."""
    if len(argv) > 3:
        raise arity_error(b"lpop" if where == LIST_HEAD else b"rpop")
    key = argv[1]
    if len(argv) == 2:
        popped = list_pop(ctx, key, where, 1)
        return None if popped is None else popped[0]
    count = _positive_arg(argv[2], ERR_POSITIVE)
    lst = writable_list(ctx.db, key)
    if lst is None:
        return NULL_ARRAY
    if count == 0:
        return []
    return list_pop(ctx, key, where, count)


@command("lpop", -2, "write fast", (1, 1, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, 0, 1),))
def lpop(ctx: Ctx, argv: list[bytes]):
    return _pop_command(ctx, argv, LIST_HEAD)


@command("rpop", -2, "write fast", (1, 1, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, 0, 1),))
def rpop(ctx: Ctx, argv: list[bytes]):
    return _pop_command(ctx, argv, LIST_TAIL)


@command("lmpop", -4, "write movablekeys", (0, 0, 0), "list", keys_fn=numkeys_keys(1),
         key_specs=(keynum_spec("RW access delete", 1, 0, 1, 1),))
def lmpop(ctx: Ctx, argv: list[bytes]):
    keys, where, count = parse_mpop_args(argv, 1)
    result = list_mpop(ctx, keys, where, count)
    return NULL_ARRAY if result is None else result


@command("lmove", 5, "write denyoom", (1, 2, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, 0, 1), KeySpec("RW insert", 2, 0, 1)))
def lmove(ctx: Ctx, argv: list[bytes]):
    wherefrom = parse_where(argv[3])
    whereto = parse_where(argv[4])
    return list_move(ctx, argv[1], argv[2], wherefrom, whereto)


@command("rpoplpush", 3, "write denyoom", (1, 2, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, 0, 1), KeySpec("RW insert", 2, 0, 1)))
def rpoplpush(ctx: Ctx, argv: list[bytes]):
    return list_move(ctx, argv[1], argv[2], LIST_TAIL, LIST_HEAD)


# --- reads ----------------------------------------------------------------------


@command("llen", 2, "readonly fast", (1, 1, 1), "list",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def llen(ctx: Ctx, argv: list[bytes]):
    lst = get_list(ctx.db, argv[1])
    return 0 if lst is None else len(lst)


@command("lindex", 3, "readonly", (1, 1, 1), "list")
def lindex(ctx: Ctx, argv: list[bytes]):
    lst = get_list(ctx.db, argv[1])
    if lst is None:
        return None
    index = _index_arg(argv[2])
    if index < -len(lst) or index >= len(lst):
        return None
    return lst[index]


def range_bounds(size: int, start: int, end: int) -> tuple[int, int]:
    """The first index and the count of elements start..end inclusive of a list of
    `size` with Redis' index rules (negative from the tail, clamped)."""
    if start < 0:
        start += size
    if end < 0:
        end += size
    if start < 0:
        start = 0
    if start > end or start >= size:
        return 0, 0
    if end >= size:
        end = size - 1
    return start, end - start + 1


def list_range(lst: ListValue, start: int, end: int) -> list[bytes]:
    """Elements start..end inclusive with Redis' index rules (negative from the
    tail, clamped), walking from the nearer end of the deque."""
    size = len(lst)
    start, count = range_bounds(size, start, end)
    if not count:
        return []
    end = start + count - 1
    if start <= size - 1 - end:
        return list(islice(lst, start, end + 1))
    out = list(islice(reversed(lst), size - 1 - end, size - start))
    out.reverse()
    return out


@command("lrange", 4, "readonly", (1, 1, 1), "list")
def lrange(ctx: Ctx, argv: list[bytes]):
    start = _index_arg(argv[2])
    end = _index_arg(argv[3])
    lst = get_list(ctx.db, argv[1])
    if lst is None:
        return []
    if reads_lazily(ctx, len(lst)):
        first, count = range_bounds(len(lst), start, end)
        if reads_lazily(ctx, count):
            return DequeRange(lst, first, count)  # read across turns (shards/chunked.py)
    return list_range(lst, start, end)


@command("lpos", -3, "readonly", (1, 1, 1), "list")
def lpos(ctx: Ctx, argv: list[bytes]):
    element = argv[2]
    rank, count, maxlen = 1, -1, 0
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            raise ERR_SYNTAX
        if opt == b"RANK":
            rank = _index_arg(argv[i + 1])
            if rank == 0:
                raise ERR_RANK_ZERO
        elif opt == b"COUNT":
            count = _positive_arg(argv[i + 1], ERR_COUNT_NEGATIVE)
        elif opt == b"MAXLEN":
            maxlen = _positive_arg(argv[i + 1], ERR_MAXLEN_NEGATIVE)
        else:
            raise ERR_SYNTAX
        i += 2
    lst = get_list(ctx.db, argv[1])
    if lst is None:
        return [] if count != -1 else None
    from_tail = rank < 0
    if rank == LLONG_MIN:
        # C negates LLONG_MIN to itself: every match qualifies and the COUNT
        # test overflows, so all matches are returned. Same here, on purpose.
        rank, count = 1, (0 if count != -1 else -1)
    elif from_tail:
        rank = -rank
    matches = _positions(lst, element, from_tail, rank, count, maxlen)
    if count != -1:
        return matches
    return matches[0] if matches else None


def _positions(lst: ListValue, element: bytes, from_tail: bool, rank: int, count: int, maxlen: int) -> list[int]:
    """Indexes of matches from the rank-th on, at most `count` of them (0: all;
    -1: just the first), looking at no more than maxlen (0: all) elements."""
    size = len(lst)
    limit = 1 if count == -1 else count
    walk = reversed(lst) if from_tail else iter(lst)
    if maxlen:
        walk = islice(walk, maxlen)
    out = []
    seen = 0
    for offset, item in enumerate(walk):
        if item == element:
            seen += 1
            if seen >= rank:
                out.append(size - 1 - offset if from_tail else offset)
                if limit and len(out) >= limit:
                    break
    return out


# --- in-place edits -------------------------------------------------------------


@command("lset", 4, "write denyoom", (1, 1, 1), "list")
def lset(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    db = ctx.db
    lst = writable_list(db, key)
    if lst is None:
        raise ERR_NO_SUCH_KEY
    index = _index_arg(argv[2])
    if index < -len(lst) or index >= len(lst):
        raise ERR_INDEX
    lst[index] = argv[3]
    db.effect([b"LSET", key, argv[2], argv[3]], key)
    db.notify(notify.LIST, b"lset", key)
    return OK


@command("ltrim", 4, "write", (1, 1, 1), "list",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def ltrim(ctx: Ctx, argv: list[bytes]):
    start = _index_arg(argv[2])
    end = _index_arg(argv[3])
    key = argv[1]
    db = ctx.db
    lst = writable_list(db, key)
    if lst is None:
        return OK
    size = len(lst)
    if start < 0:
        start += size
    if end < 0:
        end += size
    if start < 0:
        start = 0
    if start > end or start >= size:
        left, right = size, 0
    else:
        if end >= size:
            end = size - 1
        left, right = start, size - end - 1
    if left + right == 0:
        return OK
    if left + right == size:
        db.delete(key)
    elif left + right <= size - left - right:
        for _ in range(left):
            lst.popleft()
        for _ in range(right):
            lst.pop()
    else:
        db.put(key, ListValue(islice(lst, left, size - right)), keep_ttl=True)
    db.effect([b"LTRIM", key, argv[2], argv[3]], key)
    db.notify(notify.LIST, b"ltrim", key)
    if key not in db.data:
        db.notify(notify.GENERIC, b"del", key)
    return OK


@command("lrem", 4, "write", (1, 1, 1), "list",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def lrem(ctx: Ctx, argv: list[bytes]):
    to_remove = _index_arg(argv[2])
    key, element = argv[1], argv[3]
    db = ctx.db
    lst = writable_list(db, key)
    if lst is None:
        return 0
    limit = abs(to_remove) or len(lst)
    walk = reversed(lst) if to_remove < 0 else iter(lst)
    kept = []
    removed = 0
    for item in walk:
        if removed < limit and item == element:
            removed += 1
        else:
            kept.append(item)
    if not removed:
        return 0
    if to_remove < 0:
        kept.reverse()
    lst.clear()
    lst.extend(kept)
    if not lst:
        db.delete(key)
    db.effect([b"LREM", key, argv[2], element], key)
    db.notify(notify.LIST, b"lrem", key)
    if key not in db.data:
        db.notify(notify.GENERIC, b"del", key)
    return removed


@command("linsert", 5, "write denyoom", (1, 1, 1), "list",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def linsert(ctx: Ctx, argv: list[bytes]):
    side = argv[2].upper()
    if side == b"AFTER":
        after = True
    elif side == b"BEFORE":
        after = False
    else:
        raise ERR_SYNTAX
    key, pivot, element = argv[1], argv[3], argv[4]
    db = ctx.db
    lst = writable_list(db, key)
    if lst is None:
        return 0
    try:
        index = lst.index(pivot)
    except ValueError:
        return -1
    lst.insert(index + 1 if after else index, element)
    db.effect([b"LINSERT", key, b"AFTER" if after else b"BEFORE", pivot, element], key)
    db.notify(notify.LIST, b"linsert", key)
    return len(lst)
