"""Hash commands: byte-for-byte against a real redis-server 7.0 where replies are
deterministic (listpack-encoded hashes keep insertion order in both), properties
where Redis is random (HRANDFIELD) or encoding-specific (HSCAN cursors), and
effects that replay to the same state."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refserver import Pair, decode, same_all, same_sequence

import durakv.shards.commands  # noqa: F401
from durakv.shards.engine import state_of
from durakv.shards.resp import ReplyError
from durakv.shards.t_hash import HashValue, parse_cursor
from engine_util import call, new_ctx, run_and_replay

MAX_SCAN_CALLS = 10_000


def same_hash(p: Pair, key: str) -> dict:
    """HGETALL compared as a mapping (hashtable order is Redis' own)."""
    ours, theirs = p.both("HGETALL", key)
    a, b = decode(ours)[0], decode(theirs)[0]

    def as_dict(v):
        return dict(v) if v and isinstance(v[0], tuple) else dict(zip(v[::2], v[1::2]))

    assert as_dict(a) == as_dict(b), (key, a, b)
    return as_dict(a)


# --- set, get, delete ----------------------------------------------------------------------


@pytest.mark.parametrize("p", ["pair", "pair3"])
def test_basic_commands_match_redis(p, request):
    conn: Pair = request.getfixturevalue(p)
    same_all(conn, [
        ("HSET", "h", "a", "1", "b", "2"),
        ("HSET", "h", "a", "10", "c", "3", "c", "33"),
        ("HMSET", "h", "d", "4"),
        ("HSETNX", "h", "a", "x"),
        ("HSETNX", "h", "e", "5"),
        ("HSETNX", "new", "f", "v"),
        ("HGET", "h", "a"),
        ("HGET", "h", "zz"),
        ("HGET", "nokey", "a"),
        ("HMGET", "h", "a", "zz", "e"),
        ("HMGET", "nokey", "a", "b"),
        ("HEXISTS", "h", "a"),
        ("HEXISTS", "h", "zz"),
        ("HEXISTS", "nokey", "a"),
        ("HLEN", "h"),
        ("HLEN", "nokey"),
        ("HSTRLEN", "h", "a"),
        ("HSTRLEN", "h", "zz"),
        ("HSTRLEN", "nokey", "a"),
        ("HKEYS", "h"),
        ("HVALS", "h"),
        ("HGETALL", "h"),
        ("HKEYS", "nokey"),
        ("HVALS", "nokey"),
        ("HGETALL", "nokey"),
        ("HDEL", "h", "a", "a", "zz", "b"),
        ("HDEL", "h", "zz"),
        ("HDEL", "nokey", "a"),
        ("HGETALL", "h"),
        ("HSET", "h", "a", "again"),
        ("HGETALL", "h"),
        ("HDEL", "new", "f"),
        ("EXISTS", "new"),
        ("HDEL", "h", "c", "d", "e", "a"),
        ("EXISTS", "h"),
        ("TYPE", "h"),
    ])


def test_arity_errors_match_redis(pair):
    same_all(pair, [
        ("HSET", "h", "a"),
        ("HSET", "h", "a", "1", "b"),
        ("HMSET", "h", "a", "1", "b"),
        ("HSET", "h"),
        ("HSETNX", "h", "a"),
        ("HDEL", "h"),
        ("HMGET", "h"),
        ("HGETALL", "h", "x"),
        ("EXISTS", "h"),
    ])


def test_wrongtype_for_every_hash_command_matches_redis(pair):
    pair.same("RPUSH", "l", "a")
    same_all(pair, [
        ("HSET", "l", "a", "1"), ("HMSET", "l", "a", "1"), ("HSETNX", "l", "a", "1"),
        ("HGET", "l", "a"), ("HMGET", "l", "a"), ("HDEL", "l", "a"), ("HEXISTS", "l", "a"),
        ("HLEN", "l"), ("HSTRLEN", "l", "a"), ("HKEYS", "l"), ("HVALS", "l"), ("HGETALL", "l"),
        ("HINCRBY", "l", "a", 1), ("HINCRBYFLOAT", "l", "a", 1), ("HRANDFIELD", "l"),
        ("HRANDFIELD", "l", 2), ("HRANDFIELD", "l", -2, "WITHVALUES"), ("HSCAN", "l", 0),
        ("HINCRBY", "l", "a", "x"), ("HINCRBYFLOAT", "l", "a", "x"), ("HSCAN", "l", "x"),
        ("LRANGE", "l", 0, -1),
    ])


# --- increments ----------------------------------------------------------------------------


def test_hincrby_matches_redis(pair):
    same_all(pair, [
        ("HINCRBY", "h", "n", 5),
        ("HINCRBY", "h", "n", -12),
        ("HINCRBY", "h", "n", "x"),
        ("HINCRBY", "h", "n", "1.5"),
        ("HSET", "h", "s", "abc", "sp", " 1", "big", str(2**63 - 1), "small", str(-(2**63))),
        ("HINCRBY", "h", "s", 1),
        ("HINCRBY", "h", "sp", 1),
        ("HINCRBY", "h", "big", 1),
        ("HINCRBY", "h", "big", 0),
        ("HINCRBY", "h", "small", -1),
        ("HINCRBY", "h", "small", 2**63 - 1),
        ("HINCRBY", "nokey", "f", "x"),
        ("EXISTS", "nokey"),
        ("HINCRBY", "nokey", "f", 2**63 - 1),
        ("HGETALL", "h"),
        ("HGETALL", "nokey"),
    ])


def test_hincrbyfloat_matches_redis(pair):
    same_all(pair, [
        ("HINCRBYFLOAT", "h", "f", "10.5"),
        ("HINCRBYFLOAT", "h", "f", "0.1"),
        ("HINCRBYFLOAT", "h", "f", "-10.6"),
        ("HINCRBYFLOAT", "h", "f", "1e5"),
        ("HINCRBYFLOAT", "h", "f", "3.0e3"),
        ("HINCRBYFLOAT", "h", "g", "1e400"),
        ("HINCRBYFLOAT", "h", "g", "1.5"),
        ("HINCRBYFLOAT", "h", "t", "1e-4940"),
        ("HINCRBYFLOAT", "h", "f", "inf"),
        ("HINCRBYFLOAT", "h", "f", "-Infinity"),
        ("HINCRBYFLOAT", "h", "f", "nan"),
        ("HINCRBYFLOAT", "h", "f", "x"),
        ("HINCRBYFLOAT", "h", "f", " 1"),
        ("HINCRBYFLOAT", "h", "f", "1e5000"),
        ("HINCRBYFLOAT", "h", "f", "1e-5000"),
        ("HINCRBYFLOAT", "h", "m", "1.1e4932"),
        ("HINCRBYFLOAT", "h", "m", "1.1e4932"),
        ("HSET", "h", "i", "inf", "s", "abc", "sp", " 1", "hex", "0x10", "int", "7"),
        ("HINCRBYFLOAT", "h", "i", 1),
        ("HINCRBYFLOAT", "h", "s", 1),
        ("HINCRBYFLOAT", "h", "sp", 1),
        ("HINCRBYFLOAT", "h", "hex", 1),
        ("HINCRBYFLOAT", "h", "int", "-7"),
        ("HINCRBY", "h", "f", 1),
        ("HINCRBYFLOAT", "nokey", "f", "inf"),
        ("HINCRBYFLOAT", "nokey", "f", "x"),
        ("EXISTS", "nokey"),
    ])
    same_hash(pair, "h")


# --- encodings -----------------------------------------------------------------------------


def config_value(conn, name: str) -> bytes:
    return decode(conn.call("CONFIG", "GET", name))[0][1]


def test_object_encoding_transitions_match_redis(pair):
    """Thresholds are set explicitly: Debian's redis-server defaults differ from
    upstream's, and the test is about the conversion rules."""
    names = ("hash-max-listpack-entries", "hash-max-listpack-value")
    saved = [(conn, name, config_value(conn, name)) for conn in (pair.ours, pair.theirs) for name in names]
    try:
        same_all(pair, [
            ("CONFIG", "SET", "hash-max-listpack-entries", "128"),
            ("CONFIG", "SET", "hash-max-listpack-value", "64"),
            ("HSET", "small", "a", "1"),
            ("OBJECT", "ENCODING", "small"),
            ("HSET", "longvalue", "a", "x" * 65),
            ("OBJECT", "ENCODING", "longvalue"),
            ("HSET", "edge", "a", "x" * 64, "f" * 64, "1"),
            ("OBJECT", "ENCODING", "edge"),
            ("HSET", "longfield", "f" * 65, "1"),
            ("OBJECT", "ENCODING", "longfield"),
            ("HSET", "incr", "a", "1"),
            ("HINCRBY", "incr", "f" * 80, 1),
            ("OBJECT", "ENCODING", "incr"),
            ("HSET", "incrf", "a", "1"),
            ("HINCRBYFLOAT", "incrf", "f" * 80, "1.5"),
            ("OBJECT", "ENCODING", "incrf"),
            ("HSET", "many", *[str(i) for i in range(256)]),
            ("OBJECT", "ENCODING", "many"),
            ("HSET", "exact", *[str(i) for i in range(256, 512)]),
            ("OBJECT", "ENCODING", "exact"),
            ("HSET", "exact", "one-more", "v"),
            ("OBJECT", "ENCODING", "exact"),
            ("HDEL", "exact", *[str(i) for i in range(256, 512)]),
            ("HLEN", "exact"),
            ("OBJECT", "ENCODING", "exact"),
            ("CONFIG", "SET", "hash-max-listpack-value", "5"),
            ("HSET", "nx", "a", "1"),
            ("HSETNX", "nx", "a", "1234567"),
            ("OBJECT", "ENCODING", "nx"),
            ("HSETNX", "nx", "b", "1234567"),
            ("OBJECT", "ENCODING", "nx"),
            ("HSET", "over", "a", "1"),
            ("HSET", "over", "a", "1234567"),
            ("OBJECT", "ENCODING", "over"),
            ("HSET", "grow", "a", "1"),
            ("HINCRBY", "grow", "a", 11111111),
            ("OBJECT", "ENCODING", "grow"),
            ("CONFIG", "SET", "hash-max-listpack-value", "64"),
            ("CONFIG", "SET", "hash-max-listpack-entries", "2"),
            ("HSET", "two", "a", "1", "b", "2"),
            ("HSET", "two", "a", "3", "b", "4"),
            ("OBJECT", "ENCODING", "two"),
            ("HSET", "two", "c", "5"),
            ("OBJECT", "ENCODING", "two"),
            ("CONFIG", "SET", "hash-max-listpack-entries", "0"),
            ("HSET", "zero", "a", "1"),
            ("OBJECT", "ENCODING", "zero"),
        ])
    finally:
        for conn, name, value in saved:
            assert conn.call("CONFIG", "SET", name, value) == b"+OK\r\n"
    for key in ("longvalue", "many", "exact", "two"):
        pair.same_unordered("HKEYS", key)
        pair.same_unordered("HVALS", key)
        same_hash(pair, key)


def test_copy_keeps_encoding_and_is_independent():
    ctx = new_ctx()
    call(ctx, "HSET", "h", "a", "x" * 100)
    call(ctx, "COPY", "h", "c")
    call(ctx, "HDEL", "h", "a")
    assert call(ctx, "OBJECT", "ENCODING", "c") == b"hashtable"
    assert call(ctx, "HGETALL", "c").items == [b"a", b"x" * 100]
    assert call(ctx, "EXISTS", "h") == 0


# --- HRANDFIELD ----------------------------------------------------------------------------


@pytest.mark.parametrize("p", ["pair", "pair3"])
def test_hrandfield_deterministic_cases_match_redis(p, request):
    conn: Pair = request.getfixturevalue(p)
    same_all(conn, [
        ("HSET", "h", "a", "1", "b", "2", "c", "3"),
        ("HSET", "one", "only", "v"),
        ("HRANDFIELD", "nokey"),
        ("HRANDFIELD", "nokey", 3),
        ("HRANDFIELD", "nokey", -3),
        ("HRANDFIELD", "nokey", 3, "WITHVALUES"),
        ("HRANDFIELD", "h", 0),
        ("HRANDFIELD", "h", 0, "WITHVALUES"),
        ("HRANDFIELD", "h", 3),
        ("HRANDFIELD", "h", 10, "withvalues"),
        ("HRANDFIELD", "one"),
        ("HRANDFIELD", "one", 1),
        ("HRANDFIELD", "one", -4),
        ("HRANDFIELD", "one", -4, "WITHVALUES"),
        ("HRANDFIELD", "one", 1, "WITHVALUES"),
        ("HRANDFIELD", "h", "x"),
        ("HRANDFIELD", "h", -(2**63)),
        ("HRANDFIELD", "h", 1, "WITHVALUE"),
        ("HRANDFIELD", "h", 1, "WITHVALUES", "x"),
        ("HRANDFIELD", "h", -(2**62), "WITHVALUES"),
        ("HRANDFIELD", "h", 2**62, "WITHVALUES"),
        ("HRANDFIELD", "nokey", 2**62, "WITHVALUES"),
        ("HRANDFIELD", "nokey", "x", "WITHVALUES"),
    ])


def test_hrandfield_random_picks(r, r3):
    fields = {f"f{i}".encode(): f"v{i}".encode() for i in range(300)}
    r.hset("h", mapping=fields)
    assert r.hrandfield("h") in fields
    picked = r.hrandfield("h", 50)
    assert len(picked) == 50 and len(set(picked)) == 50 and set(picked) <= set(fields)
    picked = r.hrandfield("h", 250)
    assert len(set(picked)) == 250 and set(picked) <= set(fields)
    repeated = r.hrandfield("h", -1000)
    assert len(repeated) == 1000 and set(repeated) <= set(fields)
    assert len(set(repeated)) < 1000, "1000 picks from 300 fields must repeat"
    flat = r.hrandfield("h", -20, withvalues=True)
    pairs = list(zip(flat[::2], flat[1::2]))
    assert len(pairs) == 20 and all(fields[f] == v for f, v in pairs)
    nested = r3.execute_command("HRANDFIELD", "h", 5, "WITHVALUES")
    assert len(nested) == 5 and all(len(p) == 2 and fields[p[0]] == p[1] for p in nested)
    assert len({p[0] for p in nested}) == 5


def test_hrandfield_negative_count_is_bounded():
    ctx = new_ctx()
    call(ctx, "HSET", "h", "a", "1")
    error = call(ctx, "HRANDFIELD", "h", -(2**40))
    assert isinstance(error, ReplyError) and error.message == b"ERR value is out of range"
    assert call(ctx, "HRANDFIELD", "missing", -(2**40)) == []


def test_hrandfield_never_writes():
    ctx = new_ctx()
    call(ctx, "HSET", "h", *[str(i) for i in range(400)])
    ctx.db.effects.clear()
    before = state_of(ctx.db)
    for args in [("HRANDFIELD", "h"), ("HRANDFIELD", "h", 5), ("HRANDFIELD", "h", -500, "WITHVALUES"),
                 ("HRANDFIELD", "h", 150), ("HRANDFIELD", "h", 1000, "WITHVALUES")]:
        call(ctx, *args)
    assert ctx.db.effects == []
    assert state_of(ctx.db) == before


# --- HSCAN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", ["pair", "pair3"])
def test_hscan_listpack_and_errors_match_redis(p, request):
    conn: Pair = request.getfixturevalue(p)
    same_all(conn, [
        ("HSET", "h", "a", "1", "b", "2", "ab", "3"),
        ("HSCAN", "h", 0),
        ("HSCAN", "h", 99),
        ("HSCAN", "h", 99, "COUNT", 1),
        ("HSCAN", "h", 0, "MATCH", "a*"),
        ("HSCAN", "h", 0, "match", "*", "count", 100),
        ("HSCAN", "h", 0, "MATCH", "[b]"),
        ("HSCAN", "h", ""),
        ("HSCAN", "h", "+5"),
        ("HSCAN", "h", "-1"),
        ("HSCAN", "h", "18446744073709551615"),
        ("HSCAN", "h", "18446744073709551616"),
        ("HSCAN", "h", " 1"),
        ("HSCAN", "h", "1x"),
        ("HSCAN", "h", "-"),
        ("HSCAN", "h", 0, "COUNT", 0),
        ("HSCAN", "h", 0, "COUNT", -1),
        ("HSCAN", "h", 0, "COUNT", "x"),
        ("HSCAN", "h", 0, "COUNT"),
        ("HSCAN", "h", 0, "TYPE", "string"),
        ("HSCAN", "h", 0, "FOO", "bar"),
        ("HSCAN", "nokey", 0),
        ("HSCAN", "nokey", 0, "COUNT", 0),
        ("HSCAN", "nokey", "x"),
    ])


def scan_all(r, key: str, count: int, match: str | None = None, between=None) -> list[bytes]:
    """Every field HSCAN returns from cursor 0 back to 0, calling between() after each call."""
    cursor, seen = 0, []
    for _ in range(MAX_SCAN_CALLS):
        cursor, page = r.hscan(key, cursor, match=match, count=count)
        seen.extend(page)
        if between is not None:
            between()
        if cursor == 0:
            return seen
    raise AssertionError("HSCAN did not finish")


def test_hscan_hashtable_returns_every_field_once(r):
    fields = {f"field:{i}": str(i) for i in range(1000)}
    r.hset("h", mapping=fields)
    assert r.object("encoding", "h") == b"hashtable"
    cursor, page = r.hscan("h", 0, count=10)
    assert cursor != 0 and 10 <= len(page) < 1000
    seen = scan_all(r, "h", count=10)
    assert sorted(seen) == sorted(f.encode() for f in fields)
    matched = scan_all(r, "h", count=7, match="field:1*")
    assert sorted(matched) == sorted(f.encode() for f in fields if f.startswith("field:1"))
    page = r.hscan("h", 0, count=5000)
    assert page[0] == 0 and len(page[1]) == 1000


def test_hscan_returns_fields_present_for_the_whole_scan_despite_changes(r):
    r.hset("h", mapping={f"stable:{i}": "s" for i in range(500)})
    r.hset("h", mapping={f"doomed:{i}": "d" for i in range(500)})
    added = iter(range(10**6))
    doomed = iter(range(500))

    def churn():
        r.hdel("h", f"doomed:{next(doomed, 0)}", f"doomed:{next(doomed, 0)}")
        r.hset("h", mapping={f"new:{next(added)}": "n" for _ in range(3)})

    seen = scan_all(r, "h", count=10, between=churn)
    stable = {f"stable:{i}".encode() for i in range(500)}
    assert stable <= set(seen)
    returned_stable = [f for f in seen if f in stable]
    assert len(returned_stable) == len(stable), "a stable field was returned twice"


def test_parse_cursor_follows_strtoul():
    assert parse_cursor(b"") == 0
    assert parse_cursor(b"+7") == 7
    assert parse_cursor(b"-1") == 2**64 - 1
    assert parse_cursor(b"18446744073709551615") == 2**64 - 1
    for bad in (b" 1", b"1 ", b"x", b"-", b"+", b"18446744073709551616", b"0x1"):
        with pytest.raises(ReplyError):
            parse_cursor(bad)


def test_scan_index_tracks_changes_after_first_scan():
    h = HashValue()
    for i in range(200):
        h.set_field(b"f%d" % i, b"v", 128, 64)
    assert h.table
    assert len(h.scan_index()) == 200
    h.set_field(b"late", b"v", 128, 64)
    h.del_field(b"f0")
    h.set_field(b"f1", b"changed", 128, 64)
    assert sorted(f for _, f in h.scan_index()) == sorted(h)


# --- effects replay to the same state ----------------------------------------------------




def test_increments_are_logged_as_hset_of_the_result():
    ctx = new_ctx()
    call(ctx, "HINCRBYFLOAT", "h", "f", "0.1")
    call(ctx, "HINCRBYFLOAT", "h", "f", "0.2")
    call(ctx, "HINCRBY", "h", "n", "5")
    call(ctx, "HMSET", "h", "m", "1")
    call(ctx, "HSETNX", "h", "x", "1")
    call(ctx, "HDEL", "h", "x", "nothere")
    assert ctx.db.effects == [
        [b"HSET", b"h", b"f", b"0.1"],
        [b"HSET", b"h", b"f", b"0.3"],
        [b"HSET", b"h", b"n", b"5"],
        [b"HSET", b"h", b"m", b"1"],
        [b"HSET", b"h", b"x", b"1"],
        [b"HDEL", b"h", b"x"],
    ]


def test_failed_and_read_only_commands_log_nothing_and_leave_no_key():
    ctx = new_ctx()
    for args in [("HINCRBYFLOAT", "h", "f", "inf"), ("HINCRBYFLOAT", "h", "f", "x"), ("HINCRBY", "h", "f", "x"),
                 ("HDEL", "h", "f"), ("HGET", "h", "f"), ("HSCAN", "h", 0), ("HSETNX", "s", "a", "1"),
                 ("HSETNX", "s", "a", "2"), ("HSET", "s", "n", "abc")]:
        call(ctx, *args)
    ctx.db.effects.clear()
    for args in [("HINCRBY", "s", "n", 1), ("HINCRBYFLOAT", "s", "n", 1), ("HSETNX", "s", "a", "3"),
                 ("HDEL", "s", "zz"), ("HGETALL", "s"), ("HRANDFIELD", "s", -3)]:
        call(ctx, *args)
    assert ctx.db.effects == []
    assert set(ctx.db.data) == {b"s"}


KEYS = ["{k}a", "{k}b"]
FIELDS = ["f", "g", "h", "i"]
key_st = st.sampled_from(KEYS)
field_st = st.sampled_from(FIELDS)
value_st = st.sampled_from(["1", "-2", "0.5", "x", "10"])
float_st = st.sampled_from(["0.1", "-1.5", "1e3", "3", "-0.25"])

hash_command_st = st.one_of(
    st.builds(lambda k, pairs: ("HSET", k, *[x for p in pairs for x in p]), key_st,
              st.lists(st.tuples(field_st, value_st), min_size=1, max_size=3)),
    st.tuples(st.just("HSETNX"), key_st, field_st, value_st),
    st.builds(lambda k, fs: ("HDEL", k, *fs), key_st, st.lists(field_st, min_size=1, max_size=3)),
    st.tuples(st.just("HINCRBY"), key_st, field_st, st.integers(-5, 5)),
    st.tuples(st.just("HINCRBYFLOAT"), key_st, field_st, float_st),
    st.tuples(st.just("HGETALL"), key_st),
    st.tuples(st.just("HMGET"), key_st, field_st, field_st),
    st.tuples(st.just("HSTRLEN"), key_st, field_st),
    st.tuples(st.just("HSCAN"), key_st, st.just(0)),
    st.tuples(st.just("HRANDFIELD"), key_st, st.sampled_from([0, 4, 10])),
    st.tuples(st.just("SET"), key_st, value_st),
    st.tuples(st.just("DEL"), key_st),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(hash_command_st, max_size=40))
def test_replaying_effects_gives_the_live_state(commands):
    live, replayed = run_and_replay(commands)
    assert all(value for value in live.db.data.values()), "an empty hash was left behind"
    for key, value in live.db.data.items():
        if isinstance(value, HashValue):
            assert replayed.db.data[key].table == value.table


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(hash_command_st, min_size=1, max_size=25))
def test_random_command_sequences_reply_like_redis(pair, commands):
    same_sequence(pair, commands, KEYS, lambda key: [("HGETALL", key)])
