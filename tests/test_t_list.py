"""List commands: byte-for-byte against a real redis-server 7.0 where replies are
deterministic, plus durakv-specific properties (effects replay to the same state)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refserver import Pair, same_all, same_sequence

import durakv.shards.commands  # noqa: F401
from durakv.shards.engine import replay, state_of
from durakv.shards.t_list import LIST_HEAD, LIST_TAIL, list_move, list_mpop, list_pop
from engine_util import call, new_ctx, run_and_replay

FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01


# --- pushes, pops, lengths --------------------------------------------------------------


def test_push_and_pop_replies_match_redis(pair):
    same_all(pair, [
        ("LPUSH", "l", "a", "b", "c"),
        ("RPUSH", "l", "d", "e"),
        ("LRANGE", "l", 0, -1),
        ("LPUSHX", "l", "x"),
        ("RPUSHX", "l", "y", "z"),
        ("LPUSHX", "nokey", "x"),
        ("RPUSHX", "nokey", "x"),
        ("EXISTS", "nokey"),
        ("LLEN", "l"),
        ("LLEN", "nokey"),
        ("LPOP", "l"),
        ("RPOP", "l"),
        ("LPOP", "l", 2),
        ("RPOP", "l", 2),
        ("LPOP", "l", 0),
        ("RPOP", "l", 0),
        ("LRANGE", "l", 0, -1),
        ("LPOP", "l", 100),
        ("EXISTS", "l"),
        ("LPOP", "l"),
        ("RPOP", "l"),
        ("LPOP", "l", 3),
        ("RPOP", "l", 0),
        ("RPUSH", "one", "a"),
        ("RPOP", "one"),
        ("EXISTS", "one"),
    ])


def test_pop_count_errors_and_arity_match_redis(pair):
    same_all(pair, [
        ("RPUSH", "l", "a", "b"),
        ("LPOP", "l", -1),
        ("LPOP", "l", "x"),
        ("RPOP", "l", "1.5"),
        ("LPOP", "nokey", -1),
        ("LPOP", "l", 1, 2),
        ("RPOP", "l", 1, 2),
        ("LPOP",),
        ("LPUSH", "l"),
        ("LRANGE", "l", 0, -1),
    ])


@pytest.mark.parametrize("p", ["pair", "pair3"])
def test_null_shapes_per_protocol_match_redis(p, request):
    conn: Pair = request.getfixturevalue(p)
    same_all(conn, [
        ("LPOP", "nokey"),
        ("RPOP", "nokey"),
        ("LPOP", "nokey", 2),
        ("RPOP", "nokey", 0),
        ("LINDEX", "nokey", 0),
        ("LMOVE", "nokey", "{t}d", "LEFT", "RIGHT"),
        ("RPOPLPUSH", "nokey", "x"),
        ("LMPOP", 2, "{t}a", "{t}b", "LEFT"),
        ("LPOS", "nokey", "a"),
        ("LPOS", "nokey", "a", "COUNT", 0),
        ("RPUSH", "l", "a"),
        ("LPOP", "l", 0),
        ("LINDEX", "l", 5),
        ("LPOS", "l", "zz"),
        ("LPOS", "l", "zz", "COUNT", 2),
        ("LPOP", "l", 5),
        ("LPOP", "l", 0),
    ])


def test_wrongtype_for_every_list_command_matches_redis(pair):
    commands = [
        ("LPUSH", "{t}s", "a"), ("RPUSH", "{t}s", "a"), ("LPUSHX", "{t}s", "a"),
        ("RPUSHX", "{t}s", "a"), ("LPOP", "{t}s"), ("RPOP", "{t}s", 2), ("LLEN", "{t}s"),
        ("LINDEX", "{t}s", 0), ("LSET", "{t}s", 0, "x"), ("LRANGE", "{t}s", 0, -1),
        ("LREM", "{t}s", 0, "a"), ("LTRIM", "{t}s", 0, 1), ("LINSERT", "{t}s", "BEFORE", "a", "b"),
        ("LPOS", "{t}s", "a"), ("LMOVE", "{t}s", "{t}l", "LEFT", "LEFT"),
        ("LMOVE", "{t}l", "{t}s", "LEFT", "LEFT"), ("RPOPLPUSH", "{t}s", "{t}l"),
        ("RPOPLPUSH", "{t}l", "{t}s"), ("LMPOP", 2, "{t}none", "{t}s", "LEFT"),
        ("LMPOP", 2, "{t}l", "{t}s", "LEFT"), ("LRANGE", "{t}l", 0, -1), ("GET", "{t}s"),
    ]
    pair.same("SET", "{t}s", "string")
    pair.same("RPUSH", "{t}l", "a", "b")
    same_all(pair, commands)


# --- reads --------------------------------------------------------------------------------


def test_lindex_lrange_match_redis(pair):
    pair.same("RPUSH", "l", *"abcdefghij")
    for index in (0, 3, 9, 10, -1, -10, -11, 2**63 - 1, -(2**63)):
        pair.same("LINDEX", "l", index)
    pair.same("LINDEX", "l", "x")
    pair.same("LINDEX", "l", "1.0")
    ranges = [(0, -1), (2, 4), (-3, -1), (-100, 2), (5, 100), (7, 3), (10, 20), (-1, -3), (0, 0),
              (-20, -15), (9, 9), (1, -2), (2**63 - 1, -(2**63)), (-(2**63), 2**63 - 1)]
    for start, end in ranges:
        pair.same("LRANGE", "l", start, end)
    same_all(pair, [("LRANGE", "l", "x", 1), ("LRANGE", "l", 0, "y"), ("LRANGE", "nokey", 0, -1),
                    ("LRANGE", "nokey", "x", 1)])


def test_lrange_on_long_list_from_either_end_matches_redis(pair):
    pair.same("RPUSH", "l", *range(1000))
    for start, end in [(0, 4), (995, 999), (-5, -1), (400, 600), (-700, -300), (990, 2000)]:
        pair.same("LRANGE", "l", start, end)


def test_lpos_matches_redis(pair):
    pair.same("RPUSH", "l", "a", "b", "c", "a", "b", "a", "d", "a")
    cases = [
        (), ("RANK", 1), ("RANK", 2), ("RANK", 4), ("RANK", 5), ("RANK", -1), ("RANK", -3),
        ("RANK", -5), ("COUNT", 0), ("COUNT", 2), ("COUNT", 10), ("RANK", 2, "COUNT", 2),
        ("RANK", -2, "COUNT", 0), ("MAXLEN", 3), ("MAXLEN", 1), ("MAXLEN", 4, "COUNT", 0),
        ("RANK", -1, "MAXLEN", 2, "COUNT", 0), ("RANK", 2, "MAXLEN", 3), ("COUNT", 1, "COUNT", 3),
        ("RANK", -(2**63)), ("RANK", -(2**63), "COUNT", 1), ("RANK", -(2**63), "MAXLEN", 4, "COUNT", 2),
        ("RANK", 2**63 - 1), ("rank", 1, "count", 0, "maxlen", 0),
        ("RANK", 0), ("RANK", "x"), ("COUNT", -1), ("COUNT", "x"), ("MAXLEN", -1), ("MAXLEN", "y"),
        ("RANK",), ("COUNT",), ("FOO", 1), ("RANK", 1, "BAR"),
    ]
    for extra in cases:
        pair.same("LPOS", "l", "a", *extra)
    pair.same("LPOS", "l", "zz", "COUNT", 0)
    pair.same("LPOS", "nokey", "a", "RANK", 0)
    pair.same("SET", "s", "x")
    pair.same("LPOS", "s", "a", "RANK", 0)
    pair.same("LPOS", "s", "a", "MAXLEN", 1)


# --- in-place edits -----------------------------------------------------------------------


def test_lset_matches_redis(pair):
    same_all(pair, [
        ("RPUSH", "l", "a", "b", "c"),
        ("LSET", "l", 0, "A"),
        ("LSET", "l", -1, "C"),
        ("LSET", "l", 1, "bb"),
        ("LSET", "l", 3, "x"),
        ("LSET", "l", -4, "x"),
        ("LSET", "l", "x", "x"),
        ("LSET", "nokey", 0, "x"),
        ("LSET", "nokey", "x", "x"),
        ("LRANGE", "l", 0, -1),
    ])


@pytest.mark.parametrize("start,end", [
    (0, -1), (1, -1), (0, 0), (2, 3), (-2, -1), (5, 10), (10, 20), (3, 1), (-100, 100), (-100, -50),
    (0, 2), (1, 998), (990, 999), (500, 499),
])
def test_ltrim_matches_redis(pair, start, end):
    pair.same("RPUSH", "l", *range(10))
    pair.same("RPUSH", "big", *range(1000))
    for key in ("l", "big"):
        pair.same("LTRIM", key, start, end)
        pair.same("LRANGE", key, 0, -1)
        pair.same("EXISTS", key)


def test_ltrim_errors_and_ttl_kept_match_redis(pair):
    same_all(pair, [
        ("LTRIM", "nokey", 0, 1),
        ("LTRIM", "nokey", "x", 1),
        ("RPUSH", "big", *range(100)),
        ("PEXPIREAT", "big", FAR_FUTURE_MS),
        ("LTRIM", "big", 10, 11),
        ("LRANGE", "big", 0, -1),
        ("PEXPIRETIME", "big"),
        ("LTRIM", "big", 0, "y"),
    ])


def test_lrem_matches_redis(pair):
    values = ["a", "b", "a", "c", "a", "b", "a"]
    for count in (0, 1, 2, -1, -2, 10, -10):
        pair.same("DEL", "l")
        pair.same("RPUSH", "l", *values)
        pair.same("LREM", "l", count, "a")
        pair.same("LRANGE", "l", 0, -1)
        pair.same("LREM", "l", count, "zz")
    same_all(pair, [
        ("RPUSH", "only", "a", "a"),
        ("LREM", "only", 0, "a"),
        ("EXISTS", "only"),
        ("LREM", "nokey", 0, "a"),
        ("LREM", "l", "x", "a"),
        ("LREM", "nokey", "x", "a"),
    ])


def test_linsert_matches_redis(pair):
    same_all(pair, [
        ("RPUSH", "l", "a", "b", "c", "b"),
        ("LINSERT", "l", "BEFORE", "b", "x"),
        ("LINSERT", "l", "after", "b", "y"),
        ("LINSERT", "l", "AFTER", "c", "z"),
        ("LINSERT", "l", "before", "a", "first"),
        ("LINSERT", "l", "AFTER", "nothere", "q"),
        ("LRANGE", "l", 0, -1),
        ("LINSERT", "l", "MIDDLE", "b", "q"),
        ("LINSERT", "nokey", "MIDDLE", "b", "q"),
        ("LINSERT", "nokey", "BEFORE", "b", "q"),
        ("EXISTS", "nokey"),
    ])


# --- moves --------------------------------------------------------------------------------


def test_lmove_all_directions_match_redis(pair):
    pair.same("RPUSH", "{t}a", *"abcdef")
    for wherefrom in ("LEFT", "RIGHT"):
        for whereto in ("LEFT", "right"):
            pair.same("LMOVE", "{t}a", "{t}b", wherefrom, whereto)
            pair.same("LMOVE", "{t}a", "{t}a", wherefrom, whereto)
            pair.same("LRANGE", "{t}a", 0, -1)
            pair.same("LRANGE", "{t}b", 0, -1)
    same_all(pair, [
        ("RPOPLPUSH", "{t}a", "{t}b"),
        ("RPOPLPUSH", "{t}a", "{t}b"),
        ("EXISTS", "{t}a"),
        ("LRANGE", "{t}b", 0, -1),
        ("RPUSH", "{t}one", "x"),
        ("RPOPLPUSH", "{t}one", "{t}one"),
        ("LMOVE", "{t}one", "{t}one", "LEFT", "RIGHT"),
        ("LRANGE", "{t}one", 0, -1),
        ("LMOVE", "{t}b", "{t}c", "UP", "LEFT"),
        ("LMOVE", "{t}b", "{t}c", "LEFT", "DOWN"),
        ("LMOVE", "{t}nokey", "{t}c", "UP", "LEFT"),
        ("EXISTS", "{t}c"),
    ])


def test_copy_is_independent_of_its_source(pair):
    same_all(pair, [
        ("RPUSH", "{t}src", "a", "b", "c"),
        ("COPY", "{t}src", "{t}dst"),
        ("LPOP", "{t}src"),
        ("RPUSH", "{t}dst", "d"),
        ("LRANGE", "{t}src", 0, -1),
        ("LRANGE", "{t}dst", 0, -1),
        ("OBJECT", "ENCODING", "{t}dst"),
    ])


def test_lmove_keeps_destination_ttl_and_creates_without_one(pair):
    same_all(pair, [
        ("RPUSH", "{t}src", "a", "b"),
        ("RPUSH", "{t}dst", "x"),
        ("PEXPIREAT", "{t}dst", FAR_FUTURE_MS),
        ("LMOVE", "{t}src", "{t}dst", "LEFT", "LEFT"),
        ("PEXPIRETIME", "{t}dst"),
        ("LMOVE", "{t}src", "{t}new", "LEFT", "LEFT"),
        ("PEXPIRETIME", "{t}new"),
        ("EXISTS", "{t}src"),
    ])


@pytest.mark.parametrize("p", ["pair", "pair3"])
def test_lmpop_matches_redis(p, request):
    conn: Pair = request.getfixturevalue(p)
    same_all(conn, [
        ("RPUSH", "{t}b", *"abcde"),
        ("LMPOP", 2, "{t}a", "{t}b", "LEFT"),
        ("LMPOP", 2, "{t}a", "{t}b", "RIGHT", "COUNT", 2),
        ("LMPOP", 1, "{t}b", "left", "count", 10),
        ("EXISTS", "{t}b"),
        ("LMPOP", 2, "{t}a", "{t}b", "LEFT"),
        ("LMPOP", 0, "{t}a", "LEFT"),
        ("LMPOP", -1, "{t}a", "LEFT"),
        ("LMPOP", "x", "{t}a", "LEFT"),
        ("LMPOP", 1, "{t}a", "MIDDLE"),
        ("LMPOP", 1, "{t}a", "LEFT", "COUNT", 0),
        ("LMPOP", 1, "{t}a", "LEFT", "COUNT", -1),
        ("LMPOP", 1, "{t}a", "LEFT", "COUNT", "x"),
        ("LMPOP", 1, "{t}a", "LEFT", "COUNT", 1, "COUNT", 2),
        ("LMPOP", 1, "{t}a", "LEFT", "COUNT"),
        ("LMPOP", 1, "{t}a", "LEFT", "FOO"),
        ("LMPOP", 1, "{t}a"),
        ("LMPOP", 5, "{t}a", "LEFT"),
        ("LMPOP", 3, "{t}a", "LEFT"),
        ("SET", "{t}s", "x"),
        ("RPUSH", "{t}l", "v"),
        ("LMPOP", 3, "{t}none", "{t}s", "{t}l", "LEFT"),
        ("LMPOP", 3, "{t}none", "{t}l", "{t}s", "LEFT"),
    ])


def test_multi_key_list_commands_across_shards_run_through_the_router(r):
    """Keys on two shards: one cross-shard transaction (server/txn.py)."""
    assert r.cluster("keyslot", "a") != r.cluster("keyslot", "b")
    r.delete("a", "b")
    r.rpush("a", "x", "y")
    assert r.lmove("a", "b", "LEFT", "RIGHT") == b"x"
    assert r.lmpop(2, "a", "b", direction="LEFT") == [b"a", [b"y"]]
    assert r.exists("a") == 0
    assert r.lrange("b", 0, -1) == [b"x"]


# --- encoding and redis-py views -------------------------------------------------------


def test_object_encoding_is_always_quicklist_like_redis_7_0(pair):
    try:
        same_all(pair, [
            ("RPUSH", "small", "a"),
            ("OBJECT", "ENCODING", "small"),
            ("RPUSH", "big", "x" * 10000),
            ("OBJECT", "ENCODING", "big"),
            ("CONFIG", "SET", "list-max-listpack-size", "2"),
            ("RPUSH", "other", "a", "b", "c"),
            ("OBJECT", "ENCODING", "other"),
            ("TYPE", "small"),
        ])
    finally:  # the servers are the module's
        pair.same("CONFIG", "SET", "list-max-listpack-size", "-2")


def test_redis_py_roundtrip(r, r3):
    assert r.rpush("l", "a", "b", "c") == 3
    assert r.lpop("l", 2) == [b"a", b"b"]
    assert r.lpop("missing", 2) is None
    assert r3.lpop("missing", 2) is None
    assert r3.lpop("l", 0) == []
    assert r3.lmpop(1, "l", direction="RIGHT") == [b"l", [b"c"]]
    assert r.exists("l") == 0
    assert r.type("l") == b"none"


# --- effects replay to the same state ----------------------------------------------------




def test_pop_move_primitives_log_effects_that_replay():
    ctx = new_ctx()
    call(ctx, "RPUSH", "a", "1", "2", "3")
    assert list_pop(ctx, b"a", LIST_HEAD, 2) == [b"1", b"2"]
    assert list_pop(ctx, b"missing", LIST_TAIL, 1) is None
    assert list_move(ctx, b"a", b"b", LIST_TAIL, LIST_HEAD) == b"3"
    assert b"a" not in ctx.db.data
    assert list_mpop(ctx, [b"a", b"b"], LIST_TAIL, 5) == [b"b", [b"3"]]
    assert list_mpop(ctx, [b"a", b"b"], LIST_TAIL, 5) is None
    assert ctx.db.effects == [
        [b"RPUSH", b"a", b"1", b"2", b"3"],
        [b"LPOP", b"a", b"2"],
        [b"LMOVE", b"a", b"b", b"RIGHT", b"LEFT"],
        [b"RPOP", b"b", b"1"],
    ]
    fresh = new_ctx()
    replay(fresh, ctx.db.effects)
    assert state_of(fresh.db) == state_of(ctx.db) == {}


def test_reads_and_no_op_writes_log_nothing():
    ctx = new_ctx()
    call(ctx, "RPUSH", "l", "a", "b")
    ctx.db.effects.clear()
    for args in [("LRANGE", "l", 0, -1), ("LLEN", "l"), ("LINDEX", "l", 0), ("LPOS", "l", "a"),
                 ("LPOP", "l", 0), ("LPOP", "nokey"), ("LREM", "l", 0, "zz"), ("LTRIM", "l", 0, -1),
                 ("LINSERT", "l", "BEFORE", "zz", "x"), ("LPUSHX", "nokey", "x"),
                 ("LMOVE", "nokey", "l", "LEFT", "LEFT"), ("LMPOP", 1, "nokey", "LEFT"),
                 ("LSET", "l", 5, "x")]:
        call(ctx, *args)
    assert ctx.db.effects == []


KEYS = ["{k}a", "{k}b", "{k}c"]
ELEMENTS = ["x", "y", "z"]
key_st = st.sampled_from(KEYS)
elem_st = st.sampled_from(ELEMENTS)
side_st = st.sampled_from(["LEFT", "RIGHT"])
index_st = st.integers(-6, 6)

list_command_st = st.one_of(
    st.tuples(st.sampled_from(["LPUSH", "RPUSH", "LPUSHX", "RPUSHX"]), key_st, elem_st, elem_st),
    st.tuples(st.sampled_from(["LPOP", "RPOP"]), key_st),
    st.tuples(st.sampled_from(["LPOP", "RPOP"]), key_st, st.integers(0, 4)),
    st.tuples(st.just("LSET"), key_st, index_st, elem_st),
    st.tuples(st.just("LTRIM"), key_st, index_st, index_st),
    st.tuples(st.just("LREM"), key_st, index_st, elem_st),
    st.tuples(st.just("LINSERT"), key_st, st.sampled_from(["BEFORE", "AFTER"]), elem_st, elem_st),
    st.tuples(st.just("LMOVE"), key_st, key_st, side_st, side_st),
    st.tuples(st.just("RPOPLPUSH"), key_st, key_st),
    st.builds(lambda keys, side, count: ("LMPOP", len(keys), *keys, side, "COUNT", count),
              st.lists(key_st, min_size=1, max_size=3), side_st, st.integers(1, 4)),
    st.tuples(st.just("SET"), key_st, elem_st),
    st.tuples(st.just("DEL"), key_st),
    st.tuples(st.just("LRANGE"), key_st, index_st, index_st),
    st.tuples(st.just("LPOS"), key_st, elem_st, st.just("RANK"), st.sampled_from([-2, -1, 1, 2]),
              st.just("COUNT"), st.integers(0, 3)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(list_command_st, max_size=40))
def test_replaying_effects_gives_the_live_state(commands):
    live, replayed = run_and_replay(commands)
    assert all(value for value in live.db.data.values()), "an empty list was left behind"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(list_command_st, min_size=1, max_size=25))
def test_random_command_sequences_reply_like_redis(pair, commands):
    same_sequence(pair, commands, KEYS, lambda key: [("LRANGE", key, 0, -1)])
