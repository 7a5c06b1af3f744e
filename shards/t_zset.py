"""Sorted set commands (Redis' t_zset.c).

A sorted set is a `ZSetValue`: a dict member -> score plus a SortedList of
(score, member) pairs, which gives Redis' order (score, then bytewise member)
with O(log n) rank, range and pop operations. `listpack` records the encoding
Redis 7.0 would use (by zset-max-listpack-entries/-value, sticky once it is a
skiplist); a listpack stores integral scores as integers, so -0 reads back as 0
there, and that is kept here too.

Effects: ZADD and ZINCRBY log `ZADD key score member` with the resulting score
in round-trip exact "%.17g" form; ZMPOP and the pops log `ZPOPMIN|ZPOPMAX key n`;
the range removals and STORE commands are pure functions of the keyspace and
are logged as sent.

The pop logic for the blocking commands (BZPOPMIN, BZPOPMAX, BZMPOP) lives in
`zpop_generic` and `zset_pop`.
"""

from __future__ import annotations

import math
import random

from sortedcontainers import SortedList

from durakv.shards import notify
from durakv.shards.chunked import SortedRange, reads_lazily, writable
from durakv.shards.args import ERR_SYNTAX, ERR_WRONGTYPE, float_arg, int_arg, parse_numkeys_side_count
from durakv.shards.numbers import LONG_MAX, strtod
from durakv.shards.context import Ctx
from durakv.shards.glob import glob_match
from durakv.shards.keyspace import TYPE_NAMES, Keyspace
from durakv.shards.resp import NULL_ARRAY, ReplyError, fixed_error, format_double
from durakv.shards.t_keys import ENCODINGS, parse_scan_cursor
from durakv.shards.t_set import (
    ERR_LIMIT_NEGATIVE, ERR_RANDOM_TOO_MANY, RANDOM_REPLY_MAX_ITEMS, SCAN_HASH_MASK,
    SetValue, build_scan_index, parse_scan_options, positive_arg,
    scan_page, signed_count_arg,
)
from durakv.shards.table import KeySpec, command, keynum_spec, numkeys_keys

LLONG_HALF_D = float((2**63 - 1) // 2)  # double2ll's range for integral scores, as a double

ERR_NAN = fixed_error(b"ERR resulting score is not a number (NaN)")
ERR_MINMAX_FLOAT = fixed_error(b"ERR min or max is not a float")
ERR_MINMAX_LEX = fixed_error(b"ERR min or max not valid string range item")
ERR_WEIGHT = fixed_error(b"ERR weight value is not a float")
ERR_OUT_OF_RANGE = fixed_error(b"ERR value is out of range")


class ZSetValue:
    """A Redis sorted set. Mutate only through insert/rescore/delete/pop so the
    dict, the order and a live scan index stay in step."""

    __slots__ = ("scores", "order", "listpack", "scan_index")

    def __init__(self, listpack: bool = True) -> None:
        self.scores: dict[bytes, float] = {}
        self.order = SortedList()
        self.listpack = listpack
        self.scan_index: SortedList | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def insert(self, member: bytes, score: float) -> None:
        """Add a member that is not present."""
        if self.listpack:
            score += 0.0  # a listpack keeps integral scores as integers: -0 becomes 0
        self.scores[member] = score
        self.order.add((score, member))
        if self.scan_index is not None:
            self.scan_index.add((hash(member) & SCAN_HASH_MASK, member))

    def rescore(self, member: bytes, old: float, new: float) -> None:
        if self.listpack:
            new += 0.0
        self.order.remove((old, member))
        self.order.add((new, member))
        self.scores[member] = new

    def delete(self, member: bytes) -> bool:
        score = self.scores.pop(member, None)
        if score is None:
            return False
        self.order.remove((score, member))
        if self.scan_index is not None:
            self.scan_index.discard((hash(member) & SCAN_HASH_MASK, member))
        return True

    def pop(self, at_max: bool) -> tuple[bytes, float]:
        score, member = self.order.pop(-1 if at_max else 0)
        del self.scores[member]
        if self.scan_index is not None:
            self.scan_index.discard((hash(member) & SCAN_HASH_MASK, member))
        return member, score

    def canonical(self) -> list[tuple[bytes, bytes]]:
        return sorted((m, format_double(s)) for m, s in self.scores.items())

    def __copy__(self) -> "ZSetValue":
        new = ZSetValue(self.listpack)
        new.scores = dict(self.scores)
        new.order = self.order.copy()
        return new

    @classmethod
    def from_scores(cls, scores: dict[bytes, float], listpack: bool) -> "ZSetValue":
        new = cls(listpack)
        if listpack:
            scores = {m: s + 0.0 for m, s in scores.items()}
        new.scores = scores
        new.order = SortedList((s, m) for m, s in scores.items())
        return new


TYPE_NAMES[ZSetValue] = b"zset"
ENCODINGS[ZSetValue] = lambda value: b"listpack" if value.listpack else b"skiplist"


def get_zset(db: Keyspace, key: bytes) -> ZSetValue | None:
    """The sorted set at key, None if there is no key; WRONGTYPE for another type."""
    value = db.get(key)
    if value is None or type(value) is ZSetValue:
        return value
    raise ERR_WRONGTYPE


def writable_zset(db: Keyspace, key: bytes) -> ZSetValue | None:
    """get_zset, for a command about to change the sorted set: a copy while a big
    ZRANGE reads it across turns (shards/chunked.py writable)."""
    zs = get_zset(db, key)
    return zs if zs is None else writable(db, key, zs)


def _limits(ctx: Ctx) -> tuple[int, int]:
    settings = ctx.shard.settings
    return settings["zset-max-listpack-entries"], settings["zset-max-listpack-value"]


def fits_listpack(ctx: Ctx, members, size: int) -> bool:
    max_entries, max_value = _limits(ctx)
    return size <= max_entries and all(len(m) <= max_value for m in members)


def score_text(score: float) -> bytes:
    """A score as logged in effects: "%.17g" round-trips every double exactly."""
    return format_double(score)


# --- score ranges: plain strtod, as zslParseRange uses it --------------------------

def _parse_score_bound(text: bytes) -> tuple[float, bool]:
    """One end of a score range (zslParseRange): '(' makes it exclusive; the text
    is read as a C string by plain strtod, so '' is 0 and overflow is +-inf."""
    text = text.split(b"\0", 1)[0]
    exclusive = text[:1] == b"("
    if exclusive:
        text = text[1:]
    value, end = strtod(text)
    if end != len(text) or math.isnan(value):
        raise ERR_MINMAX_FLOAT
    return value, exclusive


def parse_score_range(min_text: bytes, max_text: bytes) -> tuple[float, bool, float, bool]:
    return (*_parse_score_bound(min_text), *_parse_score_bound(max_text))


# A lex bound: (kind, value, exclusive); kind -1 is '-', 1 is '+', 0 a string.
LexBound = tuple[int, bytes, bool]


def _parse_lex_bound(text: bytes) -> LexBound:
    first = text[:1]
    if first in (b"+", b"-"):
        if len(text) > 1 and text[1] != 0:
            raise ERR_MINMAX_LEX
        return (1 if first == b"+" else -1), b"", True
    if first == b"(":
        return 0, text[1:], True
    if first == b"[":
        return 0, text[1:], False
    raise ERR_MINMAX_LEX


def parse_lex_range(min_text: bytes, max_text: bytes) -> tuple[LexBound, LexBound]:
    return _parse_lex_bound(min_text), _parse_lex_bound(max_text)


def _lex_gte_min(value: bytes, bound: LexBound) -> bool:
    kind, limit, exclusive = bound
    if kind:
        return kind < 0
    return value > limit if exclusive else value >= limit


def _lex_lte_max(value: bytes, bound: LexBound) -> bool:
    kind, limit, exclusive = bound
    if kind:
        return kind > 0
    return value < limit if exclusive else value <= limit


# --- range positions ----------------------------------------------------------------


def score_span(zs: ZSetValue, lo: float, lo_ex: bool, hi: float, hi_ex: bool) -> tuple[int, int]:
    """[start, end) positions of the members whose score is in the range."""
    order = zs.order
    if lo_ex:
        start = len(order) if lo == math.inf else order.bisect_left((math.nextafter(lo, math.inf),))
    else:
        start = order.bisect_left((lo,))
    if hi_ex:
        end = order.bisect_left((hi,))
    else:
        end = len(order) if hi == math.inf else order.bisect_left((math.nextafter(hi, math.inf),))
    return start, max(start, end)


def lex_window(zs: ZSetValue, lo: LexBound, hi: LexBound, reverse: bool = False, offset: int = 0,
               limit: int = -1) -> tuple[int, int]:
    """[start, end) positions of the members a lex range yields (after LIMIT).

    Redis defines lex ranges only when all scores are equal (members are then in
    byte order, and a bisection finds the span). With mixed scores a listpack
    answers by walking the list, and so does this, to give the same members; a
    skiplist's answer then depends on its random levels, so the bisection of the
    monotonic case is kept."""
    order = zs.order
    if not order:
        return 0, 0
    score = order[0][0]
    if order[-1][0] == score:
        start = _lex_bisect(order, score, lo, True)
        return _window(start, max(start, _lex_bisect(order, score, hi, False)), offset, limit, reverse)
    if zs.listpack:
        return _listpack_lex_walk([m for _, m in order], lo, hi, reverse, offset, limit)
    a, b = 0, len(order)
    while a < b:
        mid = (a + b) // 2
        if _lex_gte_min(order[mid][1], lo):
            b = mid
        else:
            a = mid + 1
    start = a
    b = len(order)
    while a < b:
        mid = (a + b) // 2
        if _lex_lte_max(order[mid][1], hi):
            a = mid + 1
        else:
            b = mid
    return _window(start, max(start, a), offset, limit, reverse)


def _lex_range_empty(lo: LexBound, hi: LexBound) -> bool:
    """zslIsInLexRange's first test (sdscmplex: '-' and '+' are shared objects)."""
    if lo[0] and lo[0] == hi[0]:
        cmp = 0
    elif lo[0] < 0 or hi[0] > 0:
        cmp = -1
    elif lo[0] > 0 or hi[0] < 0:
        cmp = 1
    else:
        cmp = (lo[1] > hi[1]) - (lo[1] < hi[1])
    return cmp > 0 or (cmp == 0 and (lo[2] or hi[2]))


def _listpack_lex_walk(members: list[bytes], lo: LexBound, hi: LexBound, reverse: bool, offset: int,
                       limit: int) -> tuple[int, int]:
    """Redis' listpack lex range: find the first member in range from the head
    (or the last from the tail), skip `offset` members unchecked, then take
    members while they stay within the far bound."""
    n = len(members)
    if (offset < 0 or _lex_range_empty(lo, hi) or not _lex_gte_min(members[-1], lo)
            or not _lex_lte_max(members[0], hi)):
        return 0, 0
    if not reverse:
        first = next((i for i in range(n) if _lex_gte_min(members[i], lo)), n)
        if first == n or not _lex_lte_max(members[first], hi):
            return 0, 0
        start = end = first + offset
        while end < n and end - start != limit and _lex_lte_max(members[end], hi):
            end += 1
        return (start, end) if start < end else (0, 0)
    last = next((i for i in range(n - 1, -1, -1) if _lex_lte_max(members[i], hi)), -1)
    if last < 0 or not _lex_gte_min(members[last], lo):
        return 0, 0
    top = bottom = last - offset
    while bottom >= 0 and top - bottom != limit and _lex_gte_min(members[bottom], lo):
        bottom -= 1
    return (bottom + 1, top + 1) if bottom < top else (0, 0)


def _lex_bisect(order: SortedList, score: float, bound: LexBound, is_min: bool) -> int:
    """Position where a lex bound cuts an order whose scores are all `score`: the
    first member at or above a min bound, or just past the last one within a max."""
    kind, value, exclusive = bound
    if kind:
        return 0 if kind < 0 else len(order)
    if is_min != exclusive:
        return order.bisect_left((score, value))
    return order.bisect_right((score, value))


def rank_span(length: int, start: int, end: int) -> tuple[int, int]:
    """Redis' index sanitising for rank ranges; returns [start, end) (maybe empty)."""
    if start < 0:
        start += length
    if end < 0:
        end += length
    if start < 0:
        start = 0
    if start > end or start >= length:
        return 0, 0
    return start, min(end, length - 1) + 1


def _window(start: int, end: int, offset: int, limit: int, reverse: bool) -> tuple[int, int]:
    """Apply LIMIT offset count to the span [start, end): a negative offset gives
    nothing and a negative count means all (Redis' loops behave so)."""
    if offset < 0:
        return 0, 0
    if reverse:
        end -= offset
        if limit >= 0:
            start = max(start, end - limit)
    else:
        start += offset
        if limit >= 0:
            end = min(end, start + limit)
    return (start, end) if start < end else (0, 0)


def _pairs(zs: ZSetValue, start: int, end: int, reverse: bool) -> list[tuple[float, bytes]]:
    return list(zs.order.islice(start, end, reverse=reverse))


def format_pairs(ctx: Ctx, pairs, withscores: bool) -> list:
    """Members (and scores): RESP2 flat, RESP3 [member, score] pairs."""
    if not withscores:
        return [m for _, m in pairs]
    if ctx.proto >= 3:
        return [[m, s] for s, m in pairs]
    out = []
    for s, m in pairs:
        out.append(m)
        out.append(s)
    return out


# --- ZADD / ZINCRBY ------------------------------------------------------------------

_ADDED, _UPDATED, _NOP = 1, 2, 4


def zadd_generic(ctx: Ctx, argv: list[bytes], incr: bool):
    key = argv[1]
    nx = xx = gt = lt = ch = False
    i = 2
    n = len(argv)
    while i < n:
        opt = argv[i].lower()
        if opt == b"nx":
            nx = True
        elif opt == b"xx":
            xx = True
        elif opt == b"ch":
            ch = True
        elif opt == b"incr":
            incr = True
        elif opt == b"gt":
            gt = True
        elif opt == b"lt":
            lt = True
        else:
            break
        i += 1
    elements = n - i
    if elements % 2 or not elements:
        raise ERR_SYNTAX
    if nx and xx:
        raise ReplyError(b"ERR XX and NX options at the same time are not compatible")
    if (gt and nx) or (lt and nx) or (gt and lt):
        raise ReplyError(b"ERR GT, LT, and/or NX options at the same time are not compatible")
    if incr and elements > 2:
        raise ReplyError(b"ERR INCR option supports a single increment-element pair")
    scores = [float_arg(argv[j]) for j in range(i, n, 2)]
    db = ctx.db
    zs = writable_zset(ctx.db, key)
    if zs is None:
        if xx:
            return None if incr else 0
        max_entries, max_value = _limits(ctx)
        zs = ZSetValue(listpack=max_entries != 0 and len(argv[i + 1]) <= max_value)
        db.put(key, zs)
    added = updated = processed = 0
    # Every change in order, repeats included: replaying the same steps makes the
    # same encoding conversions at the same points (a listpack stores -0 as 0).
    effect = [b"ZADD", key]
    score = 0.0
    try:
        for score, member in zip(scores, argv[i + 1 :: 2]):
            flags, score = zset_add(ctx, zs, member, score, nx, xx, gt, lt, incr)
            if flags & _ADDED:
                added += 1
            if flags & _UPDATED:
                updated += 1
            if not flags & _NOP:
                processed += 1
            if flags & (_ADDED | _UPDATED):
                effect.append(score_text(zs.scores[member]))
                effect.append(member)
    finally:
        if len(effect) > 2:
            db.effect(effect, key, changes=(len(effect) - 2) // 2)  # Redis: added + updated
            db.notify(notify.ZSET, b"zincr" if incr else b"zadd", key)
    if incr:
        return score if processed else None
    return added + updated if ch else added


def zset_add(ctx: Ctx, zs: ZSetValue, member: bytes, score: float, nx: bool = False, xx: bool = False,
             gt: bool = False, lt: bool = False, incr: bool = False) -> tuple[int, float]:
    """zsetAdd: returns (flags, resulting score). Raises the NaN error when an
    increment produces NaN; nothing has changed then."""
    current = zs.scores.get(member)
    if current is not None:
        if nx:
            return _NOP, score
        if incr:
            score += current
            if math.isnan(score):
                raise ERR_NAN
        if (lt and score >= current) or (gt and score <= current):
            return _NOP, score
        if score != current:
            zs.rescore(member, current, score)
            return _UPDATED, score
        return 0, score
    if xx:
        return _NOP, score
    if zs.listpack:
        max_entries, max_value = _limits(ctx)
        if len(zs) + 1 > max_entries or len(member) > max_value:
            zs.listpack = False
    zs.insert(member, score)
    return _ADDED, score


@command("zadd", -4, "write denyoom fast", (1, 1, 1), "sorted_set")
def zadd(ctx: Ctx, argv: list[bytes]):
    return zadd_generic(ctx, argv, False)


@command("zincrby", 4, "write denyoom fast", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def zincrby(ctx: Ctx, argv: list[bytes]):
    return zadd_generic(ctx, argv, True)


# --- removal ------------------------------------------------------------------------


def _drop_if_empty(ctx: Ctx, key: bytes, zs: ZSetValue) -> None:
    if not zs:
        ctx.db.delete(key)


@command("zrem", -3, "write fast", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def zrem(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    zs = writable_zset(ctx.db, key)
    if zs is None:
        return 0
    removed = 0
    for member in argv[2:]:
        if zs.delete(member):
            removed += 1
        if not zs:
            break
    if removed:
        _drop_if_empty(ctx, key, zs)
        ctx.db.effect(argv, key, changes=removed)
        ctx.db.notify(notify.ZSET, b"zrem", key)
        if not zs:
            ctx.db.notify(notify.GENERIC, b"del", key)
    return removed


def _remove_span(ctx: Ctx, argv: list[bytes], zs: ZSetValue, start: int, end: int) -> int:
    key = argv[1]
    if start >= end:
        return 0
    for _, member in list(zs.order.islice(start, end)):
        zs.delete(member)
    _drop_if_empty(ctx, key, zs)
    ctx.db.effect(argv, key, changes=end - start)
    ctx.db.notify(notify.ZSET, argv[0].lower(), key)  # zremrangebyrank, zremrangebyscore, zremrangebylex
    if not zs:
        ctx.db.notify(notify.GENERIC, b"del", key)
    return end - start


@command("zremrangebyrank", 4, "write", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def zremrangebyrank(ctx: Ctx, argv: list[bytes]):
    start, end = int_arg(argv[2]), int_arg(argv[3])
    zs = writable_zset(ctx.db, argv[1])
    if zs is None:
        return 0
    return _remove_span(ctx, argv, zs, *rank_span(len(zs), start, end))


@command("zremrangebyscore", 4, "write", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def zremrangebyscore(ctx: Ctx, argv: list[bytes]):
    bounds = parse_score_range(argv[2], argv[3])
    zs = writable_zset(ctx.db, argv[1])
    if zs is None:
        return 0
    return _remove_span(ctx, argv, zs, *score_span(zs, *bounds))


@command("zremrangebylex", 4, "write", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def zremrangebylex(ctx: Ctx, argv: list[bytes]):
    lo, hi = parse_lex_range(argv[2], argv[3])
    zs = writable_zset(ctx.db, argv[1])
    if zs is None:
        return 0
    return _remove_span(ctx, argv, zs, *lex_window(zs, lo, hi))


# --- point reads --------------------------------------------------------------------


@command("zcard", 2, "readonly fast", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RO", 1, 0, 1),))
def zcard(ctx: Ctx, argv: list[bytes]):
    zs = get_zset(ctx.db, argv[1])
    return 0 if zs is None else len(zs)


@command("zscore", 3, "readonly fast", (1, 1, 1), "sorted_set")
def zscore(ctx: Ctx, argv: list[bytes]):
    zs = get_zset(ctx.db, argv[1])
    return None if zs is None else zs.scores.get(argv[2])


@command("zmscore", -3, "readonly fast", (1, 1, 1), "sorted_set")
def zmscore(ctx: Ctx, argv: list[bytes]):
    zs = get_zset(ctx.db, argv[1])
    if zs is None:
        return [None] * (len(argv) - 2)
    get = zs.scores.get
    return [get(m) for m in argv[2:]]


def _rank(ctx: Ctx, argv: list[bytes], reverse: bool):
    zs = get_zset(ctx.db, argv[1])
    if zs is None:
        return None
    score = zs.scores.get(argv[2])
    if score is None:
        return None
    rank = zs.order.index((score, argv[2]))
    return len(zs) - 1 - rank if reverse else rank


@command("zrank", 3, "readonly fast", (1, 1, 1), "sorted_set")
def zrank(ctx: Ctx, argv: list[bytes]):
    return _rank(ctx, argv, False)


@command("zrevrank", 3, "readonly fast", (1, 1, 1), "sorted_set")
def zrevrank(ctx: Ctx, argv: list[bytes]):
    return _rank(ctx, argv, True)


@command("zcount", 4, "readonly fast", (1, 1, 1), "sorted_set")
def zcount(ctx: Ctx, argv: list[bytes]):
    bounds = parse_score_range(argv[2], argv[3])
    zs = get_zset(ctx.db, argv[1])
    if zs is None:
        return 0
    start, end = score_span(zs, *bounds)
    return end - start


@command("zlexcount", 4, "readonly fast", (1, 1, 1), "sorted_set")
def zlexcount(ctx: Ctx, argv: list[bytes]):
    lo, hi = parse_lex_range(argv[2], argv[3])
    zs = get_zset(ctx.db, argv[1])
    if zs is None:
        return 0
    start, end = lex_window(zs, lo, hi)
    return end - start


# --- ZRANGE and friends ---------------------------------------------------------------

_AUTO, _RANK, _SCORE, _LEX = 0, 1, 2, 3


def zrange_generic(ctx: Ctx, argv: list[bytes], src_index: int, store: bool, rangetype: int,
                   reverse: bool | None):
    """zrangeGenericCommand: ZRANGE, ZRANGESTORE and the older Z[REV]RANGE* forms.
    `reverse` None means the REV option may set it."""
    key = argv[src_index]
    withscores = False
    offset, limit = 0, -1
    n = len(argv)
    j = src_index + 3
    while j < n:
        opt = argv[j].lower()
        left = n - j - 1
        if not store and opt == b"withscores":
            withscores = True
        elif opt == b"limit" and left >= 2:
            offset = int_arg(argv[j + 1])
            limit = int_arg(argv[j + 2])
            j += 2
        elif reverse is None and opt == b"rev":
            reverse = True
        elif rangetype == _AUTO and opt == b"bylex":
            rangetype = _LEX
        elif rangetype == _AUTO and opt == b"byscore":
            rangetype = _SCORE
        else:
            raise ERR_SYNTAX
        j += 1
    reverse = bool(reverse)
    if rangetype == _AUTO:
        rangetype = _RANK
    if limit != -1 and rangetype == _RANK:
        raise ReplyError(
            b"ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
        )
    if withscores and rangetype == _LEX:
        raise ReplyError(b"ERR syntax error, WITHSCORES not supported in combination with BYLEX")
    lo_arg, hi_arg = argv[src_index + 1], argv[src_index + 2]
    if reverse and rangetype != _RANK:
        lo_arg, hi_arg = hi_arg, lo_arg
    if rangetype == _RANK:
        start, end = int_arg(lo_arg), int_arg(hi_arg)
    elif rangetype == _SCORE:
        bounds = parse_score_range(lo_arg, hi_arg)
    else:
        lex = parse_lex_range(lo_arg, hi_arg)
    zs = get_zset(ctx.db, key)
    if zs is None:
        a = b = 0
    elif rangetype == _RANK:
        a, b = rank_span(len(zs), start, end)
        if reverse:
            a, b = len(zs) - b, len(zs) - a
    elif rangetype == _SCORE:
        a, b = _window(*score_span(zs, *bounds), offset, limit, reverse)
    else:
        a, b = lex_window(zs, *lex, reverse, offset, limit)
    if zs is not None and not store and reads_lazily(ctx, b - a):
        return _live_pairs(ctx, zs, a, b, reverse, withscores)
    pairs = [] if zs is None else _pairs(zs, a, b, reverse)
    if store:
        return _store_pairs(ctx, argv, argv[1], pairs)
    return format_pairs(ctx, pairs, withscores)


def _live_pairs(ctx: Ctx, zs: ZSetValue, start: int, end: int, reverse: bool, withscores: bool) -> SortedRange:
    """format_pairs of ranks [start, end), read and formatted a chunk per loop turn
    (shards/chunked.py SortedRange)."""
    shape = SortedRange.MEMBERS if not withscores else SortedRange.PAIRS if ctx.proto >= 3 else SortedRange.FLAT
    return SortedRange(zs, zs.order, start, end, reverse, shape)


def _store_pairs(ctx: Ctx, argv: list[bytes], dst_key: bytes, pairs) -> int:
    scores = {m: s for s, m in pairs}
    return store_result(ctx, argv, dst_key, scores)


def store_result(ctx: Ctx, argv: list[bytes], dst_key: bytes, scores: dict[bytes, float],
                 event: bytes | None = None) -> int:
    """setKey of a computed sorted set (or delete dst when it is empty); the type
    and TTL of the old dst go. Logged as sent: it replays to the same result.
    `event` is the keyspace event (default: the command's name, as zunionstore)."""
    db = ctx.db
    if scores:
        listpack = fits_listpack(ctx, scores, len(scores))
        db.put(dst_key, ZSetValue.from_scores(scores, listpack))
        db.effect(argv, dst_key)
        db.notify(notify.ZSET, event or argv[0].lower(), dst_key)
        return len(scores)
    if db.get(dst_key) is not None:
        db.delete(dst_key)
        db.effect(argv, dst_key)
        db.notify(notify.GENERIC, b"del", dst_key)
    return 0


@command("zrange", -4, "readonly", (1, 1, 1), "sorted_set")
def zrange(ctx: Ctx, argv: list[bytes]):
    return zrange_generic(ctx, argv, 1, False, _AUTO, None)


@command("zrangestore", -5, "write denyoom", (1, 2, 1), "sorted_set",
         key_specs=(KeySpec("OW update", 1, 0, 1), KeySpec("RO access", 2, 0, 1)))
def zrangestore(ctx: Ctx, argv: list[bytes]):
    return zrange_generic(ctx, argv, 2, True, _AUTO, None)


@command("zrevrange", -4, "readonly", (1, 1, 1), "sorted_set")
def zrevrange(ctx: Ctx, argv: list[bytes]):
    return zrange_generic(ctx, argv, 1, False, _RANK, True)


@command("zrangebyscore", -4, "readonly", (1, 1, 1), "sorted_set")
def zrangebyscore(ctx: Ctx, argv: list[bytes]):
    return zrange_generic(ctx, argv, 1, False, _SCORE, False)


@command("zrevrangebyscore", -4, "readonly", (1, 1, 1), "sorted_set")
def zrevrangebyscore(ctx: Ctx, argv: list[bytes]):
    return zrange_generic(ctx, argv, 1, False, _SCORE, True)


@command("zrangebylex", -4, "readonly", (1, 1, 1), "sorted_set")
def zrangebylex(ctx: Ctx, argv: list[bytes]):
    return zrange_generic(ctx, argv, 1, False, _LEX, False)


@command("zrevrangebylex", -4, "readonly", (1, 1, 1), "sorted_set")
def zrevrangebylex(ctx: Ctx, argv: list[bytes]):
    return zrange_generic(ctx, argv, 1, False, _LEX, True)


# --- pops (shared with the blocking commands) ---------------------------------------


def zset_pop(ctx: Ctx, key: bytes, zs: ZSetValue, at_max: bool, count: int) -> list[tuple[bytes, float]]:
    """Pop up to `count` (>= 1) members of the non-empty zset `zs` stored at `key`,
    lowest scores first (or highest with at_max); deletes the key when it empties
    and logs the effect `ZPOPMIN|ZPOPMAX key n`. Returns (member, score) pairs."""
    zs = writable(ctx.db, key, zs)
    n = min(count, len(zs))
    popped = [zs.pop(at_max) for _ in range(n)]
    _drop_if_empty(ctx, key, zs)
    ctx.db.effect([b"ZPOPMAX" if at_max else b"ZPOPMIN", key, b"%d" % n], key, changes=n)
    ctx.db.notify(notify.ZSET, b"zpopmax" if at_max else b"zpopmin", key)
    if not zs:
        ctx.db.notify(notify.GENERIC, b"del", key)
    return popped


def zpop_generic(ctx: Ctx, keys: list[bytes], at_max: bool, count: int, emit_key: bool,
                 nested: bool, nil_when_empty: bool):
    """genericZpopCommand: pop from the first of `keys` holding a zset (count -1 is
    the single pop without COUNT). Reply shapes: flat [m, s, ...]; nested
    [[m, s], ...]; emit_key flat [key, m, s, ...] (BZPOPMIN/BZPOPMAX); emit_key
    nested [key, [[m, s], ...]] (ZMPOP/BZMPOP). With no zset: NULL_ARRAY when
    nil_when_empty, else an empty array. A wrong-typed key before the first zset
    is an error; the blocking commands call this once some key holds a zset."""
    db = ctx.db
    zs = None
    key = b""
    for key in keys:
        value = db.get(key)
        if value is None:
            continue
        if type(value) is not ZSetValue:
            raise ERR_WRONGTYPE
        zs = value
        break
    if zs is None:
        return NULL_ARRAY if nil_when_empty else []
    if count == 0:
        return []
    popped = zset_pop(ctx, key, zs, at_max, 1 if count == -1 else count)
    if nested:
        items = [[m, s] for m, s in popped]
        return [key, items] if emit_key else items
    flat = [key] if emit_key else []
    for m, s in popped:
        flat.append(m)
        flat.append(s)
    return flat


def _zpop_command(ctx: Ctx, argv: list[bytes], at_max: bool):
    if len(argv) > 3:
        raise ERR_SYNTAX
    count = -1
    if len(argv) == 3:
        count = positive_arg(argv[2])
    nested = ctx.proto >= 3 and count != -1
    return zpop_generic(ctx, argv[1:2], at_max, count, False, nested, False)


@command("zpopmin", -2, "write fast", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RW access delete", 1, 0, 1),))
def zpopmin(ctx: Ctx, argv: list[bytes]):
    return _zpop_command(ctx, argv, False)


@command("zpopmax", -2, "write fast", (1, 1, 1), "sorted_set",
         key_specs=(KeySpec("RW access delete", 1, 0, 1),))
def zpopmax(ctx: Ctx, argv: list[bytes]):
    return _zpop_command(ctx, argv, True)


def parse_zmpop(argv: list[bytes], numkeys_index: int) -> tuple[list[bytes], bool, int]:
    """Arguments of ZMPOP/BZMPOP from numkeys on: (keys, at_max, count)."""
    return parse_numkeys_side_count(argv, numkeys_index, _ZMPOP_SIDES)


_ZMPOP_SIDES = {b"MIN": False, b"MAX": True}


@command("zmpop", -4, "write", (0, 0, 0), "sorted_set", keys_fn=numkeys_keys(1),
         key_specs=(keynum_spec("RW access delete", 1, 0, 1, 1),))
def zmpop(ctx: Ctx, argv: list[bytes]):
    keys, at_max, count = parse_zmpop(argv, 1)
    return zpop_generic(ctx, keys, at_max, count, True, True, True)


# --- random members -----------------------------------------------------------------


@command("zrandmember", -2, "readonly", (1, 1, 1), "sorted_set", tips=("nondeterministic_output",))
def zrandmember(ctx: Ctx, argv: list[bytes]):
    if len(argv) == 2:
        zs = get_zset(ctx.db, argv[1])
        if zs is None:
            return None
        return zs.order[random.randrange(len(zs))][1]
    count = signed_count_arg(argv[2])
    withscores = False
    if len(argv) > 4 or (len(argv) == 4 and argv[3].lower() != b"withscores"):
        raise ERR_SYNTAX
    if len(argv) == 4:
        withscores = True
        if count < -(LONG_MAX // 2) or count > LONG_MAX // 2:
            raise ERR_OUT_OF_RANGE
    zs = get_zset(ctx.db, argv[1])
    if zs is None or count == 0:
        return []
    order = zs.order
    size = len(zs)
    if count < 0 or count == 1:
        count = abs(count)
        if count > RANDOM_REPLY_MAX_ITEMS:
            raise ERR_RANDOM_TOO_MANY
        pairs = [order[random.randrange(size)] for _ in range(count)]
    elif count >= size:
        pairs = list(reversed(order))  # Redis' zset iterators run from the top score down
    else:
        pairs = [order[i] for i in random.sample(range(size), count)]
    return format_pairs(ctx, pairs, withscores)


# --- ZUNION / ZINTER / ZDIFF ----------------------------------------------------------

_SUM, _MIN, _MAX = 0, 1, 2
_UNION, _INTER, _DIFF = 0, 1, 2


class _Source:
    """One operand: a sorted set, a plain set (every score 1) or a missing key."""

    __slots__ = ("value", "weight")

    def __init__(self, value: ZSetValue | SetValue | None) -> None:
        self.value = value
        self.weight = 1.0

    def __len__(self) -> int:
        return 0 if self.value is None else len(self.value)

    def items(self):
        value = self.value
        if value is None:
            return ()
        if type(value) is ZSetValue:
            return value.scores.items()
        return ((m, 1.0) for m in value)

    def get(self, member: bytes) -> float | None:
        value = self.value
        if value is None:
            return None
        if type(value) is ZSetValue:
            return value.scores.get(member)
        return 1.0 if member in value else None


def _aggregate(target: float, value: float, how: int) -> float:
    if how == _SUM:
        total = target + value
        return 0.0 if math.isnan(total) else total
    if how == _MIN:
        return value if value < target else target
    return value if value > target else target


def zsetop_generic(ctx: Ctx, argv: list[bytes], numkeys_index: int, op: int, store: bool,
                   cardinality_only: bool = False):
    """zunionInterDiffGenericCommand for ZUNION, ZINTER, ZDIFF, their STORE forms
    and ZINTERCARD; operands may be sets."""
    numkeys = int_arg(argv[numkeys_index])
    if numkeys < 1:
        name = argv[0].lower()
        raise ReplyError(b"ERR at least 1 input key is needed for '%s' command" % name)
    if numkeys > len(argv) - (numkeys_index + 1):
        raise ERR_SYNTAX
    db = ctx.db
    sources = []
    j = numkeys_index + 1
    for key in argv[j : j + numkeys]:
        value = db.get(key)
        if value is not None and type(value) is not ZSetValue and type(value) is not SetValue:
            raise ERR_WRONGTYPE
        sources.append(_Source(value))
    j += numkeys
    how = _SUM
    withscores = False
    limit = 0
    n = len(argv)
    while j < n:
        remaining = n - j
        opt = argv[j].lower()
        if op != _DIFF and not cardinality_only and remaining >= numkeys + 1 and opt == b"weights":
            for source, text in zip(sources, argv[j + 1 : j + 1 + numkeys]):
                source.weight = float_arg(text, ERR_WEIGHT)
            j += numkeys + 1
        elif op != _DIFF and not cardinality_only and remaining >= 2 and opt == b"aggregate":
            mode = argv[j + 1].lower()
            if mode == b"sum":
                how = _SUM
            elif mode == b"min":
                how = _MIN
            elif mode == b"max":
                how = _MAX
            else:
                raise ERR_SYNTAX
            j += 2
        elif not store and not cardinality_only and opt == b"withscores":
            withscores = True
            j += 1
        elif cardinality_only and remaining >= 2 and opt == b"limit":
            limit = positive_arg(argv[j + 1], ERR_LIMIT_NEGATIVE)
            j += 2
        else:
            raise ERR_SYNTAX
    if op == _INTER:
        result = _inter(sources, how, limit if cardinality_only else 0)
    elif op == _UNION:
        result = _union(sources, how)
    else:
        result = _diff(sources)
    if cardinality_only:
        return len(result)
    if store:
        return store_result(ctx, argv, argv[1], result)
    pairs = sorted((s, m) for m, s in result.items())
    return format_pairs(ctx, pairs, withscores)


def _inter(sources: list[_Source], how: int, limit: int) -> dict[bytes, float]:
    ordered = sorted(sources, key=len)
    first = ordered[0]
    result: dict[bytes, float] = {}
    if not len(first):
        return result
    rest = ordered[1:]
    for member, score in first.items():
        total = first.weight * score
        if math.isnan(total):
            total = 0.0
        for source in rest:
            value = source.get(member)
            if value is None:
                break
            total = _aggregate(total, value * source.weight, how)
        else:
            result[member] = total
            if limit and len(result) >= limit:
                break
    return result


def _union(sources: list[_Source], how: int) -> dict[bytes, float]:
    result: dict[bytes, float] = {}
    for source in sorted(sources, key=len):
        weight = source.weight
        for member, score in source.items():
            value = weight * score
            if math.isnan(value):
                value = 0.0
            current = result.get(member)
            result[member] = value if current is None else _aggregate(current, value, how)
    return result


def _diff(sources: list[_Source]) -> dict[bytes, float]:
    first = sources[0]
    if not len(first) or any(s.value is first.value for s in sources[1:]):
        return {}
    rest = [s for s in sources[1:] if len(s)]
    return {m: s for m, s in first.items() if all(r.get(m) is None for r in rest)}


@command("zunion", -3, "readonly", (0, 0, 0), "sorted_set", keys_fn=numkeys_keys(1),
         key_specs=(keynum_spec("RO access", 1, 0, 1, 1),))
def zunion(ctx: Ctx, argv: list[bytes]):
    return zsetop_generic(ctx, argv, 1, _UNION, False)


@command("zinter", -3, "readonly", (0, 0, 0), "sorted_set", keys_fn=numkeys_keys(1),
         key_specs=(keynum_spec("RO access", 1, 0, 1, 1),))
def zinter(ctx: Ctx, argv: list[bytes]):
    return zsetop_generic(ctx, argv, 1, _INTER, False)


@command("zdiff", -3, "readonly", (0, 0, 0), "sorted_set", keys_fn=numkeys_keys(1),
         key_specs=(keynum_spec("RO access", 1, 0, 1, 1),))
def zdiff(ctx: Ctx, argv: list[bytes]):
    return zsetop_generic(ctx, argv, 1, _DIFF, False)


@command("zintercard", -3, "readonly", (0, 0, 0), "sorted_set", keys_fn=numkeys_keys(1),
         key_specs=(keynum_spec("RO access", 1, 0, 1, 1),))
def zintercard(ctx: Ctx, argv: list[bytes]):
    return zsetop_generic(ctx, argv, 1, _INTER, False, cardinality_only=True)


@command("zunionstore", -4, "write denyoom", (1, 1, 1), "sorted_set", keys_fn=numkeys_keys(2, (1,)),
         key_specs=(KeySpec("OW update", 1, 0, 1), keynum_spec("RO access", 2, 0, 1, 1)))
def zunionstore(ctx: Ctx, argv: list[bytes]):
    return zsetop_generic(ctx, argv, 2, _UNION, True)


@command("zinterstore", -4, "write denyoom", (1, 1, 1), "sorted_set", keys_fn=numkeys_keys(2, (1,)),
         key_specs=(KeySpec("OW update", 1, 0, 1), keynum_spec("RO access", 2, 0, 1, 1)))
def zinterstore(ctx: Ctx, argv: list[bytes]):
    return zsetop_generic(ctx, argv, 2, _INTER, True)


@command("zdiffstore", -4, "write denyoom", (1, 1, 1), "sorted_set", keys_fn=numkeys_keys(2, (1,)),
         key_specs=(KeySpec("OW update", 1, 0, 1), keynum_spec("RO access", 2, 0, 1, 1)))
def zdiffstore(ctx: Ctx, argv: list[bytes]):
    return zsetop_generic(ctx, argv, 2, _DIFF, True)


# --- ZSCAN --------------------------------------------------------------------------


def listpack_score_text(score: float) -> bytes:
    """How a listpack holds a score (d2string, or an integer when exact)."""
    if -LLONG_HALF_D <= score <= LLONG_HALF_D and score == int(score):
        return b"%d" % int(score)
    return format_double(score)


@command("zscan", -3, "readonly", (1, 1, 1), "sorted_set", tips=("nondeterministic_output",))
def zscan(ctx: Ctx, argv: list[bytes]):
    cursor = parse_scan_cursor(argv[2])
    zs = get_zset(ctx.db, argv[1])
    if zs is None:
        return [b"0", []]
    count, pattern = parse_scan_options(argv, 3)
    scores = zs.scores
    if zs.listpack:
        next_cursor = 0
        members = [m for _, m in zs.order]
        render = listpack_score_text
    else:
        if zs.scan_index is None:
            zs.scan_index = build_scan_index(scores)
        next_cursor, members = scan_page(zs.scan_index, cursor, count)
        if next_cursor == 0:
            zs.scan_index = None
        render = format_double
    out = []
    for member in members:
        if pattern is None or glob_match(pattern, member):
            out.append(member)
            out.append(render(scores[member]))
    return [b"%d" % next_cursor, out]
