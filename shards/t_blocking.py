"""Blocking list and sorted-set commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH,
BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP).

Each one first tries the non-blocking operation (the same functions LPOP,
LMOVE, ZPOPMIN use, so the logged effect is that plain pop); when there is
nothing to take it returns `Block` and the shard parks the request (see
shards/blocking.py). Inside MULTI/EXEC they never block: they answer as if
the timeout had expired at once, as Redis does.
"""

from __future__ import annotations

from durakv.shards.args import ERR_WRONGTYPE
from durakv.shards.blocking import Block, parse_timeout_ms
from durakv.shards.context import Ctx
from durakv.shards.resp import NULL_ARRAY
from durakv.shards.t_list import (
    LIST_HEAD, LIST_TAIL, ListValue, list_move, list_pop, parse_mpop_args, parse_where,
)
from durakv.shards.t_zset import ZSetValue, parse_zmpop, zpop_generic
from durakv.shards.table import KeySpec, command, keynum_spec, numkeys_keys


def _block_or_timeout(ctx: Ctx, keys: list[bytes], deadline_ms: int, serve) -> object:
    if ctx.in_multi:
        return NULL_ARRAY
    return Block(keys, deadline_ms, NULL_ARRAY, serve)


def _is_list(ctx: Ctx, key: bytes) -> bool:
    return type(ctx.db.get(key)) is ListValue


def _is_zset(ctx: Ctx, key: bytes) -> bool:
    return type(ctx.db.get(key)) is ZSetValue


def _blocking_pop(ctx: Ctx, argv: list[bytes], where: int):
    deadline_ms = parse_timeout_ms(argv[-1], ctx.db.now())
    keys = argv[1:-1]
    for key in keys:
        popped = list_pop(ctx, key, where, 1)
        if popped:
            return [key, popped[0]]

    def serve(ctx: Ctx, key: bytes):
        return [key, list_pop(ctx, key, where, 1)[0]] if _is_list(ctx, key) else None

    return _block_or_timeout(ctx, keys, deadline_ms, serve)


@command("blpop", -3, "write noscript blocking", (1, -2, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, -2, 1),))
def blpop(ctx: Ctx, argv: list[bytes]):
    return _blocking_pop(ctx, argv, LIST_HEAD)


@command("brpop", -3, "write noscript blocking", (1, -2, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, -2, 1),))
def brpop(ctx: Ctx, argv: list[bytes]):
    return _blocking_pop(ctx, argv, LIST_TAIL)


def _blocking_move(ctx: Ctx, src: bytes, dst: bytes, wherefrom: int, whereto: int, timeout_arg: bytes):
    deadline_ms = parse_timeout_ms(timeout_arg, ctx.db.now())
    moved = list_move(ctx, src, dst, wherefrom, whereto)
    if moved is not None:
        return moved
    if ctx.in_multi:
        return None

    def serve(ctx: Ctx, key: bytes):
        return list_move(ctx, src, dst, wherefrom, whereto) if _is_list(ctx, src) else None

    return Block([src], deadline_ms, NULL_ARRAY, serve)


@command("blmove", 6, "write denyoom noscript blocking", (1, 2, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, 0, 1), KeySpec("RW insert", 2, 0, 1)))
def blmove(ctx: Ctx, argv: list[bytes]):
    wherefrom = parse_where(argv[3])
    whereto = parse_where(argv[4])
    return _blocking_move(ctx, argv[1], argv[2], wherefrom, whereto, argv[5])


@command("brpoplpush", 4, "write denyoom noscript blocking", (1, 2, 1), "list",
         key_specs=(KeySpec("RW access delete", 1, 0, 1), KeySpec("RW insert", 2, 0, 1)))
def brpoplpush(ctx: Ctx, argv: list[bytes]):
    return _blocking_move(ctx, argv[1], argv[2], LIST_TAIL, LIST_HEAD, argv[3])


@command("blmpop", -5, "write blocking", (0, 0, 0), "list", keys_fn=numkeys_keys(2),
         key_specs=(keynum_spec("RW access delete", 2, 0, 1, 1),))
def blmpop(ctx: Ctx, argv: list[bytes]):
    keys, where, count = parse_mpop_args(argv, 2)
    deadline_ms = parse_timeout_ms(argv[1], ctx.db.now())
    for key in keys:
        popped = list_pop(ctx, key, where, count)
        if popped:
            return [key, popped]

    def serve(ctx: Ctx, key: bytes):
        return [key, list_pop(ctx, key, where, count)] if _is_list(ctx, key) else None

    return _block_or_timeout(ctx, keys, deadline_ms, serve)


def _first_zset_exists(ctx: Ctx, keys: list[bytes]) -> bool:
    db = ctx.db
    for key in keys:
        value = db.get(key)
        if value is not None:
            if type(value) is not ZSetValue:
                raise ERR_WRONGTYPE
            return True
    return False


def _blocking_zpop(ctx: Ctx, keys: list[bytes], at_max: bool, count: int, nested: bool, timeout_arg: bytes):
    deadline_ms = parse_timeout_ms(timeout_arg, ctx.db.now())
    if _first_zset_exists(ctx, keys):
        return zpop_generic(ctx, keys, at_max, count, True, nested, True)

    def serve(ctx: Ctx, key: bytes):
        return zpop_generic(ctx, [key], at_max, count, True, nested, True) if _is_zset(ctx, key) else None

    return _block_or_timeout(ctx, keys, deadline_ms, serve)


@command("bzpopmin", -3, "write noscript blocking fast", (1, -2, 1), "sorted_set",
         key_specs=(KeySpec("RW access delete", 1, -2, 1),))
def bzpopmin(ctx: Ctx, argv: list[bytes]):
    return _blocking_zpop(ctx, argv[1:-1], False, -1, False, argv[-1])


@command("bzpopmax", -3, "write noscript blocking fast", (1, -2, 1), "sorted_set",
         key_specs=(KeySpec("RW access delete", 1, -2, 1),))
def bzpopmax(ctx: Ctx, argv: list[bytes]):
    return _blocking_zpop(ctx, argv[1:-1], True, -1, False, argv[-1])


@command("bzmpop", -5, "write blocking", (0, 0, 0), "sorted_set", keys_fn=numkeys_keys(2),
         key_specs=(keynum_spec("RW access delete", 2, 0, 1, 1),))
def bzmpop(ctx: Ctx, argv: list[bytes]):
    keys, at_max, count = parse_zmpop(argv, 2)
    return _blocking_zpop(ctx, keys, at_max, count, True, argv[1])
