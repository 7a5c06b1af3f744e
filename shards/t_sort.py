"""SORT and SORT_RO (Redis' sort.c) over lists, sets and sorted sets.

BY and GET patterns (`weight_*`, `data_*->field`, `#`) are looked up in this
shard's keyspace only: keys a pattern names on another shard read as missing.
Redis in cluster mode refuses such patterns outright; durakv allows them and
documents the limit (tests place pattern keys on the sorted key's slot with a
hash tag).

ALPHA compares bytes, which is what Redis does under the C / C.UTF-8 locale
(strcoll stops at a NUL byte when not storing, and so does this). A sorted
set's encoding is left as it is (Redis converts it to a skiplist), so that
OBJECT ENCODING and score normalisation stay what replay will reproduce.

Effect of STORE: the destination is rebuilt by logged commands, `DEL dest` (if
it existed) and `RPUSH dest <elements...>`, so replay never re-sorts (a set's
iteration order, which decides ties, differs between processes).
"""

from __future__ import annotations

import math
from fractions import Fraction

from durakv.shards import notify
from durakv.shards.args import ERR_SYNTAX, ERR_WRONGTYPE, int_arg
from durakv.shards.context import Ctx
from durakv.shards.luaenv import in_script
from durakv.shards.resp import fixed_error
from durakv.shards.t_hash import HashValue
from durakv.shards.t_list import ListValue
from durakv.shards.numbers import strtod
from durakv.shards.t_set import SetValue, members_in_order
from durakv.shards.t_zset import ZSetValue
from durakv.shards.table import KeySpec, command, unknown_spec

# Redis' notes on SORT's key specs (COMMAND INFO).
_PATTERN_KEYS_NOTE = ("For the optional BY/GET keyword. It is marked 'unknown' because the key names derive "
                      "from the content of the key we sort")
_STORE_KEY_NOTE = ("For the optional STORE keyword. It is marked 'unknown' because the keyword can appear "
                   "anywhere in the argument array")
ERR_SCORES = fixed_error(b"ERR One or more scores can't be converted into double")
DBL_MIN = 2.2250738585072014e-308


def sort_keys(argv: list[bytes]) -> list[int]:
    """Key positions as Redis' sortGetKeys finds them: the sorted key and the
    last STORE destination (LIMIT, GET and BY arguments are skipped over)."""
    keys = [1]
    store = None
    argc = len(argv)
    i = 2
    while i < argc:
        option = argv[i].lower()
        if option == b"limit":
            i += 2
        elif option == b"get" or option == b"by":
            i += 1
        elif option == b"store" and i + 1 < argc:
            store = i + 1
        i += 1
    if store is not None:
        keys.append(store)
    return keys


def _sort_ro_keys(argv: list[bytes]) -> list[int]:
    return [1]


def _cstr(data: bytes) -> bytes:
    """What C string functions see: the bytes before the first NUL."""
    end = data.find(b"\x00")
    return data if end < 0 else data[:end]


def lookup_by_pattern(ctx: Ctx, pattern: bytes, element: bytes) -> bytes | None:
    """The value a BY/GET pattern names for element: `#` is the element itself,
    `pre*post` a string key, `pre*post->field` a hash field; None if missing
    or of another type. A pattern without `*` names nothing."""
    text = _cstr(pattern)
    if text == b"#":
        return element
    star = text.find(b"*")
    if star < 0:
        return None
    arrow = text.find(b"->", star + 1)
    field = None
    tail = len(pattern)
    if arrow >= 0 and arrow + 2 < len(text):
        field = pattern[arrow + 2 :]
        tail = arrow
    key = pattern[:star] + element + pattern[star + 1 : tail]
    value = ctx.db.get(key)
    if value is None:
        return None
    if field is not None:
        return value.get(field) if type(value) is HashValue else None
    t = type(value)
    if t is bytes:
        return value
    return bytes(value) if t is bytearray else None


def _erange(text: bytes, value: float) -> bool:
    """Whether C strtod would set ERANGE: overflow to infinity from a finite
    spelling, or underflow to zero from a non-zero mantissa."""
    lowered = text.lower()
    if math.isinf(value):
        return b"inf" not in lowered
    if value == 0.0:
        mantissa = lowered.split(b"p" if lowered.lstrip(b"+-").startswith(b"0x") else b"e", 1)[0]
        if lowered.lstrip(b"+-").startswith(b"0x"):
            mantissa = mantissa.lstrip(b"+-")[2:]
        return any(c in b"123456789abcdef" for c in mantissa)
    return False


def parse_sort_score(text: bytes) -> float | None:
    """A numeric sort weight as Redis reads it: C strtod over the C string, all
    of it consumed, no NaN, no ERANGE (overflow, or an inexact result below
    the normal range). None when it cannot be used."""
    text = _cstr(text)
    value, used = strtod(text)
    if used != len(text) or math.isnan(value) or _erange(text, value):
        return None
    if value != 0.0 and abs(value) < DBL_MIN and not _exact(text, value):
        return None
    return value


def _exact(text: bytes, value: float) -> bool:
    """Whether the decimal or hex literal equals value exactly."""
    literal = text.strip(b" \t\n\v\f\r").lower()
    negative = literal.startswith(b"-")
    literal = literal.lstrip(b"+-")
    if literal.startswith(b"0x"):
        mantissa, _, exponent = literal[2:].partition(b"p")
        whole, _, frac = mantissa.partition(b".")
        exact = Fraction(int((whole + frac) or b"0", 16), 16 ** len(frac)) * Fraction(2) ** int(exponent or b"0")
    else:
        exact = Fraction(literal.decode())
    return (-exact if negative else exact) == Fraction(value)


class _Options:
    __slots__ = ("desc", "alpha", "limit_start", "limit_count", "store", "by", "dontsort", "gets")

    def __init__(self) -> None:
        self.desc = False
        self.alpha = False
        self.limit_start = 0
        self.limit_count = -1
        self.store: bytes | None = None
        self.by: bytes | None = None
        self.dontsort = False
        self.gets: list[bytes] = []


def _parse(argv: list[bytes], readonly: bool) -> _Options:
    opts = _Options()
    argc = len(argv)
    j = 2
    while j < argc:
        left = argc - j - 1
        option = argv[j].lower()
        if option == b"asc":
            opts.desc = False
        elif option == b"desc":
            opts.desc = True
        elif option == b"alpha":
            opts.alpha = True
        elif option == b"limit" and left >= 2:
            opts.limit_start = int_arg(argv[j + 1])
            opts.limit_count = int_arg(argv[j + 2])
            j += 2
        elif option == b"store" and left >= 1 and not readonly:
            opts.store = argv[j + 1]
            j += 1
        elif option == b"by" and left >= 1:
            opts.by = argv[j + 1]
            if b"*" not in _cstr(opts.by):
                opts.dontsort = True  # a constant BY: keep the natural order
            j += 1
        elif option == b"get" and left >= 1:
            opts.gets.append(argv[j + 1])
            j += 1
        else:
            raise ERR_SYNTAX
        j += 1
    return opts


def _range(opts: _Options, length: int) -> tuple[int, int]:
    start = min(max(opts.limit_start, 0), length)
    count = min(max(opts.limit_count, -1), length)
    end = length - 1 if count < 0 else start + count - 1
    if start >= length:
        start, end = length - 1, length - 2
    if end >= length:
        end = length - 1
    return start, end


def _natural_window(value: object, opts: _Options, start: int, end: int) -> list[bytes]:
    """Elements start..end of a list or sorted set in their own order (reversed
    for DESC), as Redis reads them when there is nothing to sort."""
    if end < start:
        return []
    if type(value) is ZSetValue:
        order = value.order
        if opts.desc:
            picked = order[len(order) - 1 - end : len(order) - start]
            return [member for _, member in reversed(picked)]
        return [member for _, member in order[start : end + 1]]
    if opts.desc:
        n = len(value)
        return [value[n - 1 - i] for i in range(start, end + 1)]
    return [value[i] for i in range(start, end + 1)]


def _all_elements(value: object) -> list[bytes]:
    t = type(value)
    if t is SetValue:
        return members_in_order(value)
    if t is ZSetValue:
        return list(value.scores)
    return list(value)


def _sorted(ctx: Ctx, elements: list[bytes], opts: _Options) -> list[bytes]:
    by = opts.by
    if opts.alpha:
        full = opts.store is not None  # STORE compares binary-safe, else like strcoll
        if by is None:
            key = (lambda e: e) if full else _cstr
            return sorted(elements, key=key, reverse=opts.desc)
        keyed = []
        for element in elements:
            weight = lookup_by_pattern(ctx, by, element)
            if weight is None:
                keyed.append(((0, b""), element))  # missing weights sort first
            else:
                keyed.append(((1, weight if full else _cstr(weight)), element))
    else:
        keyed = []
        bad = False
        for element in elements:
            weight = lookup_by_pattern(ctx, by, element) if by is not None else element
            score = 0.0
            if weight is not None:
                parsed = parse_sort_score(weight)
                if parsed is None:
                    bad = True
                else:
                    score = parsed
            keyed.append(((score, element), element))
        if bad:
            raise ERR_SCORES
    keyed.sort(key=lambda pair: pair[0], reverse=opts.desc)
    return [element for _, element in keyed]


def _sort(ctx: Ctx, argv: list[bytes], readonly: bool):
    opts = _parse(argv, readonly)
    db = ctx.db
    value = db.get(argv[1])
    t = type(value)
    if value is None:
        value = ListValue()
    elif t is not ListValue and t is not SetValue and t is not ZSetValue:
        raise ERR_WRONGTYPE
    if opts.dontsort and type(value) is SetValue and (opts.store is not None or in_script(db)):
        # A set has no natural order to keep: sort it so a stored list or a script's
        # reply is the same everywhere (sort.c forces ALPHA for STORE and scripts).
        opts.dontsort = False
        opts.alpha = True
        opts.by = None
    start, end = _range(opts, len(value))
    if opts.dontsort and type(value) is not SetValue:
        window = _natural_window(value, opts, start, end)
    else:
        elements = _all_elements(value)
        if not opts.dontsort:
            elements = _sorted(ctx, elements, opts)
        window = elements[start : end + 1] if end >= start else []
    gets = opts.gets
    if opts.store is None:
        if not gets:
            return window
        out: list[bytes | None] = []
        for element in window:
            out.extend(lookup_by_pattern(ctx, pattern, element) for pattern in gets)
        return out
    if gets:
        items = []
        for element in window:
            for pattern in gets:
                found = lookup_by_pattern(ctx, pattern, element)
                items.append(b"" if found is None else found)
    else:
        items = window
    _store(ctx, opts.store, items)
    return len(items)


def _store(ctx: Ctx, dest: bytes, items: list[bytes]) -> None:
    db = ctx.db
    existed = db.get(dest) is not None
    if existed:
        db.delete(dest)
        db.effect([b"DEL", dest], dest)
    if items:
        db.put(dest, ListValue(items))
        db.effect([b"RPUSH", dest, *items], dest)
        db.notify(notify.LIST, b"sortstore", dest)
    elif existed:
        db.notify(notify.GENERIC, b"del", dest)


def reads_pattern_keys(argv: list[bytes]) -> bool:
    """Whether SORT's options name a BY pattern with a '*' or a GET pattern other than
    '#': exactly the forms that read keys no key position names (a cross-shard SORT
    cannot lock them, server/client.py)."""
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if option in (b"by", b"get") and i + 1 < len(argv):
            pattern = argv[i + 1]
            if (option == b"by" and b"*" in pattern) or (option == b"get" and pattern != b"#"):
                return True
            i += 2
        elif option == b"limit":
            i += 3
        elif option == b"store":
            i += 2
        else:
            i += 1
    return False


def may_read_patterns(argv: list[bytes]) -> bool:
    """SORT key alone reads only key; any option may be a BY or GET pattern,
    which reads keys no key position names."""
    return len(argv) > 2


@command("sort", -2, "write denyoom", (1, 1, 1), "generic", keys_fn=sort_keys,
         acl="set sortedset list dangerous", reads_undeclared_keys=may_read_patterns,
         key_specs=(KeySpec("RO access", 1, 0, 1), unknown_spec("RO access", _PATTERN_KEYS_NOTE),
                    unknown_spec("OW update", _STORE_KEY_NOTE)))
def sort(ctx: Ctx, argv: list[bytes]):
    return _sort(ctx, argv, False)


@command("sort_ro", -2, "readonly", (1, 1, 1), "generic", keys_fn=_sort_ro_keys,
         acl="set sortedset list dangerous", reads_undeclared_keys=may_read_patterns,
         key_specs=(KeySpec("RO access", 1, 0, 1), unknown_spec("RO access", _PATTERN_KEYS_NOTE)))
def sort_ro(ctx: Ctx, argv: list[bytes]):
    return _sort(ctx, argv, True)
