"""Set commands: byte-for-byte against a real redis-server 7.0 where replies are
deterministic (intsets iterate in order; hashtable replies compare as multisets),
properties for the random commands and SSCAN, and effects that replay to the
live state."""

from __future__ import annotations

import copy

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refserver import Pair, decode, same_all

from durakv.shards import commands  # noqa: F401
from durakv.shards.t_set import SetValue
from engine_util import assert_replay_equals_live, call, new_ctx, run_and_replay

SCAN_CALLS_MAX = 10_000


def same_as_multiset(p: Pair, *command) -> None:
    """Same reply, comparing arrays (hashtable iteration order) as multisets."""
    ours, theirs = p.both(*command)
    a, b = decode(ours)[0], decode(theirs)[0]
    if isinstance(a, list) and isinstance(b, list):
        a, b = sorted(a, key=repr), sorted(b, key=repr)
    assert a == b, f"{command!r}: durakv {ours!r} != redis {theirs!r}"


@pytest.fixture
def intset_limit(pair):
    """Restores set-max-intset-entries on both servers after a test changes it."""
    yield
    pair.same("CONFIG", "SET", "set-max-intset-entries", "512")


# --- membership -----------------------------------------------------------------------


def test_add_remove_membership_match_redis(pair):
    same_all(pair, [
        ("SADD", "s", 3, 1, 2, 10, -5, 0),
        ("SADD", "s", 3, 1),
        ("SMEMBERS", "s"),
        ("SCARD", "s"),
        ("SCARD", "nokey"),
        ("SISMEMBER", "s", 3),
        ("SISMEMBER", "s", "x"),
        ("SISMEMBER", "nokey", "x"),
        ("SMISMEMBER", "s", 3, "x", 10),
        ("SMISMEMBER", "nokey", "a", "b"),
        ("SREM", "s", 1, 2, "nope"),
        ("SREM", "s", "nope"),
        ("SREM", "nokey", "a"),
        ("SMEMBERS", "s"),
        ("SREM", "s", 3, 10, -5, 0, "more"),
        ("EXISTS", "s"),
        ("SMEMBERS", "nokey"),
        ("SADD", "s"),
        ("SMISMEMBER", "s"),
        ("SCARD", "s", "x"),
    ])


@pytest.mark.parametrize("p", ["pair", "pair3"])
def test_reply_shapes_per_protocol_match_redis(p, request):
    conn: Pair = request.getfixturevalue(p)
    same_all(conn, [
        ("SADD", "{t}i", 3, 1, 2),
        ("SADD", "{t}j", 2, 3, 4),
        ("SMEMBERS", "{t}i"),
        ("SMEMBERS", "{t}nokey"),
        ("SINTER", "{t}i", "{t}j"),
        ("SINTER", "{t}i", "{t}nokey"),
        ("SUNION", "{t}i", "{t}j"),
        ("SDIFF", "{t}i", "{t}j"),
        ("SMISMEMBER", "{t}i", 1, 9),
        ("SPOP", "{t}nokey"),
        ("SPOP", "{t}nokey", 3),
        ("SPOP", "{t}i", 0),
        ("SRANDMEMBER", "{t}nokey"),
        ("SRANDMEMBER", "{t}nokey", 3),
        ("SRANDMEMBER", "{t}i", 0),
        ("SRANDMEMBER", "{t}i", 10),
        ("SSCAN", "{t}i", 0),
        ("SSCAN", "{t}nokey", 0),
        ("SISMEMBER", "{t}i", 1),
    ])


def test_wrongtype_for_every_set_command_matches_redis(pair):
    same_all(pair, [
        ("SET", "{t}str", "x"),
        ("SADD", "{t}s", "a"),
        ("SADD", "{t}str", "a"),
        ("SREM", "{t}str", "a"),
        ("SMEMBERS", "{t}str"),
        ("SISMEMBER", "{t}str", "a"),
        ("SMISMEMBER", "{t}str", "a"),
        ("SCARD", "{t}str"),
        ("SPOP", "{t}str"),
        ("SPOP", "{t}str", 1),
        ("SRANDMEMBER", "{t}str"),
        ("SRANDMEMBER", "{t}str", 2),
        ("SINTER", "{t}nokey", "{t}str"),
        ("SINTERSTORE", "{t}d", "{t}s", "{t}str"),
        ("SINTERCARD", 2, "{t}nokey", "{t}str"),
        ("SUNION", "{t}s", "{t}str"),
        ("SUNIONSTORE", "{t}d", "{t}s", "{t}str"),
        ("SDIFF", "{t}nokey", "{t}str"),
        ("SDIFFSTORE", "{t}d", "{t}s", "{t}str"),
        ("SSCAN", "{t}str", 0),
        ("SMOVE", "{t}str", "{t}s", "a"),
        ("SMOVE", "{t}s", "{t}str", "a"),
        ("SMOVE", "{t}nokey", "{t}str", "a"),
        ("EXISTS", "{t}d"),
        ("GET", "{t}str"),
    ])


# --- random members ---------------------------------------------------------------------


def test_pop_and_random_member_argument_errors_match_redis(pair):
    same_all(pair, [
        ("SADD", "s", 1, 2, 3),
        ("SPOP", "s", -1),
        ("SPOP", "s", "abc"),
        ("SPOP", "s", 1, 2),
        ("SRANDMEMBER", "s", "-9223372036854775808"),
        ("SRANDMEMBER", "s", "9223372036854775808"),
        ("SRANDMEMBER", "s", "abc"),
        ("SRANDMEMBER", "s", 1, 2),
        ("SRANDMEMBER", "s", 3),
        ("SRANDMEMBER", "s", 30),
        ("SPOP", "s", 3),
        ("EXISTS", "s"),
        ("SPOP", "s"),
        ("SADD", "one", "a"),
        ("SPOP", "one"),
        ("EXISTS", "one"),
    ])


def test_spop_with_count_takes_distinct_members_and_deletes_when_emptied(r):
    members = {str(i).encode() for i in range(30)}
    r.sadd("s", *members)
    taken = []
    for count in (2, 11, 9, 0, 4, 1, 0, 10):
        got = r.spop("s", count)
        assert len(got) == min(count, 30 - len(taken))
        taken.extend(got)
    assert len(taken) == len(set(taken)) == 30
    assert set(taken) == members
    assert r.exists("s") == 0


@pytest.mark.parametrize("values", [[str(i) for i in range(20)], [f"m{i}" for i in range(20)]])
def test_spop_taking_most_of_the_set_leaves_the_rest(r, values):
    r.sadd("s", *values)
    popped = r.spop("s", 18)
    left = r.smembers("s")
    assert len(popped) == 18 and len(left) == 2
    assert set(popped) | left == {v.encode() for v in values}
    assert r.object("encoding", "s") == (b"intset" if values[0] == "0" else b"hashtable")


def test_srandmember_counts(r):
    values = {f"m{i}".encode() for i in range(10)}
    r.sadd("s", *values)
    distinct = r.srandmember("s", 6)
    assert len(distinct) == len(set(distinct)) == 6 and set(distinct) <= values
    assert set(r.srandmember("s", 100)) == values
    repeated = r.srandmember("s", -200)
    assert len(repeated) == 200 and set(repeated) <= values
    assert len(set(repeated)) > 1
    assert r.srandmember("s") in values
    assert r.scard("s") == 10


# --- algebra ------------------------------------------------------------------------------


def test_algebra_on_intsets_matches_redis(pair):
    same_all(pair, [
        ("SADD", "{t}a", 1, 2, 3, 4, 5),
        ("SADD", "{t}b", 4, 5, 6),
        ("SADD", "{t}c", 5, 6, 7),
        ("SINTER", "{t}a", "{t}b", "{t}c"),
        ("SINTER", "{t}a", "{t}a"),
        ("SUNION", "{t}a", "{t}b", "{t}nokey", "{t}c"),
        ("SDIFF", "{t}a", "{t}b", "{t}c"),
        ("SDIFF", "{t}a", "{t}a"),
        ("SDIFF", "{t}nokey", "{t}a"),
        ("SINTERCARD", 2, "{t}a", "{t}b"),
        ("SINTERCARD", 2, "{t}a", "{t}b", "LIMIT", 1),
        ("SINTERCARD", 2, "{t}a", "{t}b", "LIMIT", 0),
        ("SINTERCARD", 2, "{t}a", "{t}nokey"),
        ("SINTERSTORE", "{t}d", "{t}a", "{t}b"),
        ("SMEMBERS", "{t}d"),
        ("OBJECT", "ENCODING", "{t}d"),
        ("SUNIONSTORE", "{t}d", "{t}a", "{t}c"),
        ("SMEMBERS", "{t}d"),
        ("SDIFFSTORE", "{t}d", "{t}a", "{t}b"),
        ("SMEMBERS", "{t}d"),
        ("SINTERSTORE", "{t}d", "{t}a", "{t}nokey"),
        ("EXISTS", "{t}d"),
        ("SET", "{t}d", "string"),
        ("SUNIONSTORE", "{t}d", "{t}nokey"),
        ("EXISTS", "{t}d"),
        ("SET", "{t}d", "string"),
        ("EXPIRE", "{t}d", 100),
        ("SDIFFSTORE", "{t}d", "{t}c", "{t}b"),
        ("TYPE", "{t}d"),
        ("TTL", "{t}d"),
        ("SDIFFSTORE", "{t}d", "{t}a", "{t}a"),
        ("EXISTS", "{t}d"),
    ])


def test_algebra_on_hashtables_matches_redis(pair):
    same_all(pair, [
        ("SADD", "{t}a", "x", "y", "z", 1),
        ("SADD", "{t}b", "y", 1, 2),
    ])
    for command in [("SINTER", "{t}a", "{t}b"), ("SUNION", "{t}a", "{t}b"), ("SDIFF", "{t}a", "{t}b"),
                    ("SDIFF", "{t}b", "{t}a")]:
        same_as_multiset(pair, *command)
    for command in [("SUNIONSTORE", "{t}d", "{t}a", "{t}b"), ("OBJECT", "ENCODING", "{t}d"),
                    ("SINTERSTORE", "{t}d", "{t}a", "{t}b"), ("OBJECT", "ENCODING", "{t}d"),
                    ("SMEMBERS", "{t}d"), ("SDIFFSTORE", "{t}d", "{t}b", "{t}a"),
                    ("OBJECT", "ENCODING", "{t}d"), ("SMEMBERS", "{t}d")]:
        same_as_multiset(pair, *command)


def test_sintercard_argument_errors_match_redis(pair):
    same_all(pair, [
        ("SADD", "{t}a", 1, 2),
        ("SINTERCARD", 0, "{t}a"),
        ("SINTERCARD", -1, "{t}a"),
        ("SINTERCARD", "abc", "{t}a"),
        ("SINTERCARD", 3, "{t}a", "{t}b"),
        ("SINTERCARD", 1, "{t}a", "LIMIT", -1),
        ("SINTERCARD", 1, "{t}a", "LIMIT", "x"),
        ("SINTERCARD", 1, "{t}a", "LIMIT"),
        ("SINTERCARD", 1, "{t}a", "FOO"),
        ("SINTERCARD", 1),
    ])


def test_multi_key_set_commands_across_shards_run_through_the_router(r):
    """Keys on two shards: one cross-shard transaction (server/txn.py)."""
    assert r.cluster("keyslot", "a") != r.cluster("keyslot", "b")
    r.delete("a", "b")
    r.sadd("a", "x")
    assert r.execute_command("SINTER", "a", "b") == set() or r.execute_command("SINTER", "a", "b") == []
    assert r.execute_command("SINTERCARD", 2, "a", "b") == 0
    assert r.execute_command("SMOVE", "a", "b", "x") == 1
    assert r.execute_command("SUNIONSTORE", "a", "b") == 1
    assert r.smembers("a") == {b"x"} and r.smembers("b") == {b"x"}


# --- SMOVE --------------------------------------------------------------------------------


def test_smove_matches_redis(pair):
    same_all(pair, [
        ("SADD", "{t}h", "a", "b"),
        ("SADD", "{t}i", 1, 2),
        ("SMOVE", "{t}h", "{t}i", "a"),
        ("OBJECT", "ENCODING", "{t}i"),
        ("SMOVE", "{t}i", "{t}new", 1),
        ("OBJECT", "ENCODING", "{t}new"),
        ("SMOVE", "{t}i", "{t}new2", "a"),
        ("OBJECT", "ENCODING", "{t}new2"),
        ("SMOVE", "{t}i", "{t}i", 2),
        ("SMOVE", "{t}i", "{t}i", "zz"),
        ("SMOVE", "{t}i", "{t}h", "zz"),
        ("SMOVE", "{t}nokey", "{t}h", "a"),
        ("SMOVE", "{t}new", "{t}h", 1),
        ("EXISTS", "{t}new"),
        ("SMEMBERS", "{t}i"),
    ])


# --- encodings ----------------------------------------------------------------------------


def test_intset_conversions_match_redis(pair, intset_limit):
    same_all(pair, [
        ("SADD", "{t}s", 1, 2),
        ("OBJECT", "ENCODING", "{t}s"),
        ("SADD", "{t}s", "007"),
        ("OBJECT", "ENCODING", "{t}s"),
        ("SREM", "{t}s", "007"),
        ("OBJECT", "ENCODING", "{t}s"),
        ("SADD", "{t}neg", "-0"),
        ("OBJECT", "ENCODING", "{t}neg"),
        ("SADD", "{t}big", "9223372036854775807", "-9223372036854775808"),
        ("OBJECT", "ENCODING", "{t}big"),
        ("SADD", "{t}big", "9223372036854775808"),
        ("OBJECT", "ENCODING", "{t}big"),
        ("CONFIG", "SET", "set-max-intset-entries", 3),
        ("SADD", "{t}small", 1, 2, 3),
        ("OBJECT", "ENCODING", "{t}small"),
        ("SADD", "{t}small", 4),
        ("OBJECT", "ENCODING", "{t}small"),
        ("SREM", "{t}small", 4, 3),
        ("OBJECT", "ENCODING", "{t}small"),
        ("SADD", "{t}t1", 1, 2, 3, 4),
        ("SADD", "{t}t2", 1),
        ("SUNIONSTORE", "{t}u", "{t}t2", "{t}t1"),
        ("OBJECT", "ENCODING", "{t}u"),
        ("SDIFFSTORE", "{t}u", "{t}t1", "{t}t2"),
        ("OBJECT", "ENCODING", "{t}u"),
        ("SMEMBERS", "{t}u"),
        ("CONFIG", "SET", "set-max-intset-entries", 512),
        ("SADD", "{t}x1", 1, 2, 3, "a"),
        ("SADD", "{t}x2", "a"),
        ("SDIFFSTORE", "{t}r", "{t}x1", "{t}x2"),
        ("OBJECT", "ENCODING", "{t}r"),
        ("SADD", "{t}y1", 1, 2, 3, 4, 5, 6, "a"),
        ("SADD", "{t}y2", "a", 9),
        ("SADD", "{t}y3", *"bcdefghijklmn"),
        ("SDIFFSTORE", "{t}r", "{t}y1", "{t}y2", "{t}y3"),
        ("OBJECT", "ENCODING", "{t}r"),
        ("SDIFFSTORE", "{t}r", "{t}y1", "{t}y2"),
        ("OBJECT", "ENCODING", "{t}r"),
    ])


def test_copy_keeps_encoding_and_is_independent(r):
    r.sadd("{t}a", 1, 2, 3)
    assert r.copy("{t}a", "{t}b")
    assert r.object("encoding", "{t}b") == b"intset"
    r.sadd("{t}b", "x")
    assert r.smembers("{t}a") == {b"1", b"2", b"3"}
    assert r.object("encoding", "{t}a") == b"intset"
    assert r.object("encoding", "{t}b") == b"hashtable"
    s = SetValue([b"1"], intset=True)
    c = copy.copy(s)
    assert type(c) is SetValue and c.intset and c == s and c is not s


# --- SSCAN --------------------------------------------------------------------------------


def test_sscan_arguments_match_redis(pair):
    same_all(pair, [
        ("SADD", "i", 5, 1, 3),
        ("SSCAN", "i", 0),
        ("SSCAN", "i", 99, "COUNT", 1),
        ("SSCAN", "i", "abc"),
        ("SSCAN", "i", "-1"),
        ("SSCAN", "i", "+1"),
        ("SSCAN", "i", ""),
        ("SSCAN", "i", " 1"),
        ("SSCAN", "i", "18446744073709551616"),
        ("SSCAN", "i", 0, "COUNT", 0),
        ("SSCAN", "i", 0, "COUNT", "x"),
        ("SSCAN", "i", 0, "COUNT"),
        ("SSCAN", "i", 0, "MATCH"),
        ("SSCAN", "i", 0, "TYPE", "set"),
        ("SSCAN", "i", 0, "MATCH", "[13]"),
        ("SSCAN", "nokey", 0, "COUNT", 0),
        ("SSCAN", "nokey", "abc"),
    ])


def full_scan(r: redis.Redis, key: str, count: int, between=None) -> list[bytes]:
    cursor = 0
    seen: list[bytes] = []
    for calls in range(SCAN_CALLS_MAX):
        cursor, members = r.sscan(key, cursor, count=count)
        seen.extend(members)
        if between is not None:
            between(calls)
        if cursor == 0:
            return seen
    raise AssertionError("SSCAN did not finish")


def test_sscan_of_hashtable_returns_every_member_page_by_page(r):
    members = {f"m{i}".encode() for i in range(1000)}
    r.sadd("s", *members)
    seen = full_scan(r, "s", 7)
    assert len(seen) == len(members) and set(seen) == members
    matched = []
    cursor = 0
    while True:
        cursor, page = r.sscan("s", cursor, match="m1*", count=50)
        matched.extend(page)
        if cursor == 0:
            break
    assert sorted(matched) == sorted(m for m in members if m.startswith(b"m1"))


def test_sscan_returns_members_present_throughout_while_the_set_changes(r):
    stable = {f"stable{i}".encode() for i in range(500)}
    doomed = [f"doomed{i}".encode() for i in range(500)]
    r.sadd("s", *stable, *doomed)

    def churn(call: int) -> None:
        r.sadd("s", *(f"new{call}-{j}".encode() for j in range(5)))
        r.srem("s", doomed[call % len(doomed)])

    seen = full_scan(r, "s", 10, churn)
    assert stable <= set(seen)
    assert not [m for m in seen if seen.count(m) > 1 and m in stable]


# --- redis-py views -------------------------------------------------------------------------


def test_redis_py_roundtrip(r, r3):
    assert r.sadd("{t}s", "a", "b") == 2
    assert r.smembers("{t}s") == {b"a", b"b"}
    assert r3.smembers("{t}s") == {b"a", b"b"}
    assert r3.sdiff("{t}s", "{t}nokey") == {b"a", b"b"}
    assert r.type("{t}s") == b"set"
    assert r.smismember("{t}s", ["a", "zz"]) == [1, 0]
    assert r3.sinter("{t}s", "{t}s") == {b"a", b"b"}


# --- effects replay to the same state ----------------------------------------------------




def test_spop_logs_the_removed_members_and_srandmember_logs_nothing():
    ctx = new_ctx()
    call(ctx, "SADD", "s", "a", "b", "c", "d")
    ctx.db.effects.clear()
    call(ctx, "SRANDMEMBER", "s", -5)
    call(ctx, "SRANDMEMBER", "s")
    assert ctx.db.effects == []
    popped = call(ctx, "SPOP", "s")
    assert ctx.db.effects == [[b"SREM", b"s", popped]]
    two = call(ctx, "SPOP", "s", 2).items
    assert ctx.db.effects[-1] == [b"SREM", b"s", *two]
    call(ctx, "SPOP", "s", 5)
    assert ctx.db.effects[-1] == [b"DEL", b"s"]
    assert ctx.db.data == {}


def test_reads_and_no_op_writes_log_nothing():
    ctx = new_ctx()
    call(ctx, "SADD", "s", "a", "b")
    ctx.db.effects.clear()
    for args in [("SADD", "s", "a"), ("SREM", "s", "zz"), ("SREM", "nokey", "a"), ("SMEMBERS", "s"),
                 ("SISMEMBER", "s", "a"), ("SCARD", "s"), ("SPOP", "nokey"), ("SPOP", "s", 0),
                 ("SMOVE", "nokey", "s", "a"), ("SMOVE", "s", "s", "a"), ("SMOVE", "s", "d", "zz"),
                 ("SINTERSTORE", "d", "s", "nokey"), ("SUNIONSTORE", "d", "nokey"), ("SSCAN", "s", 0),
                 ("SINTERCARD", 1, "s"), ("SDIFF", "s", "nokey")]:
        call(ctx, *args)
    assert ctx.db.effects == []


KEYS = ["{k}a", "{k}b", "{k}c"]
MEMBERS = ["1", "2", "3", "x", "y"]
key_st = st.sampled_from(KEYS)
member_st = st.sampled_from(MEMBERS)
members_st = st.lists(member_st, min_size=1, max_size=4)
keys_st = st.lists(key_st, min_size=1, max_size=3)

set_command_st = st.one_of(
    st.builds(lambda k, ms: ("SADD", k, *ms), key_st, members_st),
    st.builds(lambda k, ms: ("SREM", k, *ms), key_st, members_st),
    st.tuples(st.just("SMOVE"), key_st, key_st, member_st),
    st.builds(lambda cmd, d, ks: (cmd, d, *ks),
              st.sampled_from(["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"]), key_st, keys_st),
    st.tuples(st.just("SET"), key_st, member_st),
    st.tuples(st.just("DEL"), key_st),
    st.builds(lambda cmd, ks: (cmd, *ks), st.sampled_from(["SINTER", "SUNION", "SDIFF"]), keys_st),
    st.builds(lambda ks, limit: ("SINTERCARD", len(ks), *ks, "LIMIT", limit), keys_st, st.integers(0, 3)),
    st.tuples(st.sampled_from(["SCARD", "SMEMBERS"]), key_st),
    st.tuples(st.just("SISMEMBER"), key_st, member_st),
)
random_command_st = st.one_of(
    st.tuples(st.just("SPOP"), key_st),
    st.tuples(st.just("SPOP"), key_st, st.integers(0, 6)),
    st.tuples(st.just("SRANDMEMBER"), key_st, st.integers(-6, 6)),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(set_command_st, random_command_st), max_size=40))
def test_replaying_effects_gives_the_live_state(commands):
    live, replayed = run_and_replay(commands)
    assert all(value for value in live.db.data.values()), "an empty set was left behind"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(set_command_st, min_size=1, max_size=25))
def test_random_command_sequences_reply_like_redis(pair, commands):
    pair.same("FLUSHALL")
    for command in commands:
        if command[0] in ("SINTER", "SUNION", "SDIFF", "SMEMBERS"):
            same_as_multiset(pair, *command)
        else:
            pair.same(*command)
    for key in KEYS:
        pair.same("TYPE", key)
        pair.same("OBJECT", "ENCODING", key)
        same_as_multiset(pair, "SMEMBERS", key)


big_member_st = st.integers(0, 700).map(lambda i: f"m{i}")
big_set_command_st = st.one_of(
    st.builds(lambda ms: ("SADD", "{k}big", *ms), st.lists(big_member_st, min_size=1, max_size=5)),
    st.builds(lambda ms: ("SREM", "{k}big", *ms), st.lists(big_member_st, min_size=1, max_size=5)),
    st.tuples(st.just("SPOP"), st.just("{k}big")),
    st.tuples(st.just("SPOP"), st.just("{k}big"), st.integers(0, 40)),
    st.tuples(st.just("SRANDMEMBER"), st.just("{k}big"), st.integers(-5, 5)),
    st.tuples(st.just("SMOVE"), st.just("{k}big"), st.just("{k}other"), big_member_st),
    st.tuples(st.just("SSCAN"), st.just("{k}big"), st.integers(0, 2**63)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(big_set_command_st, max_size=30))
def test_random_and_scan_indexes_of_big_sets_stay_in_step(commands):
    live = new_ctx()
    call(live, "SADD", "{k}big", *(f"m{i}" for i in range(600)))
    for command in commands:
        call(live, *command)
        s = live.db.data.get(b"{k}big")
        if s is None:
            continue
        if s.rand_list is not None:
            assert sorted(s.rand_list) == sorted(s)
            assert all(s.rand_list[i] == m for m, i in s.rand_pos.items()) and len(s.rand_pos) == len(s)
        if s.scan_index is not None:
            assert sorted(m for _, m in s.scan_index) == sorted(s)
    assert_replay_equals_live(live)


def test_smove_signals_the_destination_only_when_it_changes():
    ctx = new_ctx()
    call(ctx, "SADD", "src", "a", "b")
    call(ctx, "SADD", "dst", "a")
    touched: list[bytes] = []
    ctx.db.on_modified = touched.append
    assert call(ctx, "SMOVE", "src", "dst", "a") == 1
    assert touched == [b"src"]
    assert call(ctx, "SMOVE", "src", "dst", "b") == 1
    assert touched == [b"src", b"src", b"dst"]
    assert b"src" not in ctx.db.data
