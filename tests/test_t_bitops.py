"""Bitmap and bitfield commands: byte-for-byte against a real redis-server 7.0
(replies, error texts and the resulting string values), plus durakv's own
property that logged effects replay to the live state."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refserver import keys_on_different_shards, same_all
from engine_util import call, new_ctx, run_and_replay

import durakv.shards.commands  # noqa: F401


# --- SETBIT / GETBIT ---------------------------------------------------------------------


def test_setbit_getbit_match_redis(pair):
    same_all(pair, [
        ("SETBIT", "b", 7, 1),
        ("GET", "b"),
        ("SETBIT", "b", 7, 1),
        ("SETBIT", "b", 7, 0),
        ("SETBIT", "b", 100, 1),
        ("STRLEN", "b"),
        ("GET", "b"),
        ("GETBIT", "b", 100),
        ("GETBIT", "b", 99),
        ("GETBIT", "b", 100000),
        ("GETBIT", "nokey", 0),
        ("OBJECT", "ENCODING", "b"),
        ("SET", "s", "abc"),
        ("SETBIT", "s", 1, 0),
        ("GET", "s"),
        ("OBJECT", "ENCODING", "s"),
        ("SETBIT", "s", 30, 1),
        ("GET", "s"),
    ])


def test_setbit_errors_match_redis(pair):
    pair.same("RPUSH", "list", "a")
    pair.same("SET", "s", "x")
    same_all(pair, [
        ("SETBIT", "s", -1, 1),
        ("SETBIT", "s", "abc", 1),
        ("SETBIT", "s", "4294967296", 1),
        ("SETBIT", "s", "#3", 1),
        ("SETBIT", "s", " 1", 1),
        ("SETBIT", "s", 0, 2),
        ("SETBIT", "s", 0, -1),
        ("SETBIT", "s", 0, "x"),
        ("SETBIT", "s", 0, "01"),
        ("SETBIT", "s", -1, "x"),  # the offset is checked first
        ("SETBIT", "list", 0, 1),
        ("SETBIT", "list", 0, 5),
        ("GETBIT", "list", 0),
        ("GETBIT", "s", -1),
        ("GETBIT", "s", "4294967296"),
        ("GETBIT", "s", "4294967295"),
        ("SETBIT", "s"),
        ("GETBIT", "s"),
        ("GET", "s"),
    ])


def test_setbit_keeps_the_ttl(pair):
    pair.same("SET", "k", "a", "EX", 1000)
    pair.same("SETBIT", "k", 50, 1)
    ours, theirs = pair.both("TTL", "k")
    assert ours == theirs == b":1000\r\n"


# --- BITCOUNT / BITPOS -----------------------------------------------------------------------


def test_bitcount_matches_redis(pair):
    pair.same("SET", "s", b"\xff\xf0\x00\x0f\xaa\x55foobar")
    for args in [(), (0, -1), (1, 1), (-3, -1), (-1, -3), (5, 2), (0, 100), (-100, 100),
                 (0, 0, "BYTE"), (0, 0, "BIT"), (3, 12, "bit"), (-5, -1, "BIT"), (7, 7, "BIT"),
                 (8, 15, "BIT"), (-100, 3, "BIT"), (0, 1000, "BIT"), (9, 8, "BIT")]:
        pair.same("BITCOUNT", "s", *args)
    same_all(pair, [
        ("BITCOUNT", "nokey"),
        ("BITCOUNT", "nokey", 0),  # 7.0 answers 0 for a missing key before parsing
        ("BITCOUNT", "nokey", "a", "b", "c", "d"),
        ("BITCOUNT", "s", 0),
        ("BITCOUNT", "s", 0, 1, "BIT", "x"),
        ("BITCOUNT", "s", "a", 1),
        ("BITCOUNT", "s", 0, "b"),
        ("BITCOUNT", "s", 0, 1, "WORD"),
        ("BITCOUNT", "s", -1, -5, "WORD"),  # an empty negative range wins over the unit
        ("SET", "empty", ""),
        ("BITCOUNT", "empty"),
        ("BITCOUNT", "empty", 0, -1),
        ("BITCOUNT", "empty", 0, -1, "BIT"),
        ("RPUSH", "list", "a"),
        ("BITCOUNT", "list"),
        ("BITCOUNT", "list", "x"),
    ])


def test_bitpos_matches_redis(pair):
    pair.same("SET", "s", b"\xff\xf0\x00\x0f\xff\xff")
    pair.same("SET", "ones", b"\xff\xff\xff")
    pair.same("SET", "zeros", b"\x00\x00\x00")
    pair.same("SET", "empty", "")
    for key in ("s", "ones", "zeros", "empty", "nokey"):
        for bit in (0, 1):
            for args in [(), (0,), (1,), (-1,), (2, -1), (0, 0), (-2, -1), (3, 1), (0, 100),
                         (0, -1, "BYTE"), (0, -1, "BIT"), (3, 9, "BIT"), (12, 27, "bit"),
                         (5, 5, "BIT"), (-9, -2, "BIT"), (20, 23, "BIT"), (30, 30, "BIT"),
                         (1, 0, "BIT")]:
                pair.same("BITPOS", key, bit, *args)
    same_all(pair, [
        ("BITPOS", "s", 2),
        ("BITPOS", "s", -1),
        ("BITPOS", "s", "x"),
        ("BITPOS", "nokey", 2),
        ("BITPOS", "nokey", 1, "x"),  # a missing key answers before the range is parsed
        ("BITPOS", "s", 1, "x"),
        ("BITPOS", "s", 1, 0, "x"),
        ("BITPOS", "s", 1, 0, 1, "WORD"),
        ("BITPOS", "s", 1, "x", 1, "WORD"),
        ("BITPOS", "s", 1, 0, 1, "BIT", "extra"),
        ("RPUSH", "list", "a"),
        ("BITPOS", "list", 1),
    ])


def test_bitcount_and_bitpos_on_a_long_string_match_redis(pair):
    rng = random.Random(7)
    value = bytearray(200_000)
    for i in range(0, len(value), 373):
        value[i] = rng.randrange(256)
    pair.same("SET", "big", bytes(value))
    pair.same("SET", "ones", b"\xff" * 150_000)
    for _ in range(60):
        key = rng.choice(["big", "ones"])
        size = 200_000 if key == "big" else 150_000
        pair.same("BITCOUNT", key, rng.randint(-size, size), rng.randint(-size, size))
        pair.same("BITCOUNT", key, rng.randint(-8 * size, 8 * size), rng.randint(-8 * size, 8 * size), "BIT")
        pair.same("BITPOS", key, rng.randint(0, 1), rng.randint(-size, size))
        pair.same("BITPOS", key, rng.randint(0, 1), rng.randint(-8 * size, 8 * size),
                  rng.randint(-8 * size, 8 * size), "BIT")


# --- BITOP ----------------------------------------------------------------------------------


def test_bitop_matches_redis(pair):
    same_all(pair, [
        ("SET", "{b}a", b"\x0f\xf0\xaa"),
        ("SET", "{b}b", b"\xff\x01"),
        ("SET", "{b}c", b"\x55"),
        ("BITOP", "AND", "{b}d", "{b}a", "{b}b", "{b}c"),
        ("GET", "{b}d"),
        ("OBJECT", "ENCODING", "{b}d"),
        ("BITOP", "or", "{b}d", "{b}a", "{b}b", "{b}c"),
        ("GET", "{b}d"),
        ("BITOP", "Xor", "{b}d", "{b}a", "{b}b", "{b}c", "{b}missing"),
        ("GET", "{b}d"),
        ("BITOP", "AND", "{b}d", "{b}a", "{b}missing"),
        ("GET", "{b}d"),
        ("BITOP", "NOT", "{b}d", "{b}a"),
        ("GET", "{b}d"),
        ("BITOP", "NOT", "{b}a", "{b}a"),
        ("GET", "{b}a"),
        ("SET", "{b}dest", "x", "EX", 100),
        ("BITOP", "OR", "{b}dest", "{b}b"),
        ("TTL", "{b}dest"),
        ("BITOP", "OR", "{b}dest", "{b}missing", "{b}missing2"),
        ("EXISTS", "{b}dest"),
        ("BITOP", "OR", "{b}dest", "{b}missing"),
        ("SET", "{b}empty", ""),
        ("BITOP", "AND", "{b}dest", "{b}empty", "{b}empty"),
        ("EXISTS", "{b}dest"),
        ("RPUSH", "{b}list", "x"),
        ("BITOP", "OR", "{b}list", "{b}a"),
        ("TYPE", "{b}list"),
        ("BITOP", "OR", "{b}d", "{b}a", "{b}list"),
        ("BITOP", "NOT", "{b}d", "{b}a", "{b}b"),
        ("BITOP", "NOT", "{b}d", "{b}list", "{b}b"),
        ("BITOP", "NAND", "{b}d", "{b}a"),
        ("BITOP", "AND", "{b}d"),
    ])


def test_bitop_across_shards_runs_through_the_router(r):
    dest, src = keys_on_different_shards()  # a cross-shard transaction (server/txn.py)
    r.set(src, b"\xff")
    assert r.execute_command("BITOP", "NOT", dest, src) == 1
    assert r.get(dest) == b"\x00"


# --- BITFIELD ---------------------------------------------------------------------------------


def test_bitfield_matches_redis(pair):
    same_all(pair, [
        ("BITFIELD", "bf", "SET", "u8", 0, 255, "GET", "u8", 0, "GET", "i8", 0),
        ("GET", "bf"),
        ("BITFIELD", "bf", "INCRBY", "u2", 100, 1, "OVERFLOW", "SAT", "INCRBY", "u2", 102, 1),
        ("BITFIELD", "bf", "INCRBY", "u2", 100, 1, "OVERFLOW", "SAT", "INCRBY", "u2", 102, 1),
        ("BITFIELD", "bf", "OVERFLOW", "FAIL", "INCRBY", "u2", 100, 1, "GET", "u2", 100),
        ("BITFIELD", "bf", "SET", "i64", 0, "-9223372036854775808", "INCRBY", "i64", 0, -1),
        ("BITFIELD", "bf", "OVERFLOW", "SAT", "INCRBY", "i64", 0, -1, "INCRBY", "i64", 0, "9223372036854775807"),
        ("BITFIELD", "bf", "SET", "u63", 1, "9223372036854775807", "GET", "u63", 1, "GET", "i64", 0),
        ("BITFIELD", "bf", "SET", "u8", "#3", 7, "SET", "i5", "#3", -9, "GET", "u8", 24),
        ("BITFIELD", "bf", "OVERFLOW", "WRAP", "SET", "u8", 0, 300, "SET", "i8", 8, 200, "SET", "u8", 16, -1),
        ("BITFIELD", "bf", "OVERFLOW", "SAT", "SET", "u8", 0, 300, "SET", "i8", 8, 200, "SET", "u8", 16, -1,
         "SET", "i8", 24, -200),
        ("BITFIELD", "bf", "OVERFLOW", "FAIL", "SET", "u8", 0, 300, "SET", "i8", 8, -128),
        ("GET", "bf"),
        ("BITFIELD", "bf", "GET", "u16", 1000, "GET", "i1", 5, "GET", "u1", 5, "GET", "i3", 61),
        ("BITFIELD", "bf"),
        ("BITFIELD", "nokey", "GET", "u8", 0),
        ("EXISTS", "nokey"),
        ("BITFIELD", "grow", "OVERFLOW", "FAIL", "SET", "u8", 80, 1000),
        ("GET", "grow"),  # a failed write still grows (and here creates) the string
        ("BITFIELD", "grow", "OVERFLOW", "FAIL", "INCRBY", "i8", 0, 200, "INCRBY", "u4", 0, -1),
        ("BITFIELD_RO", "bf", "GET", "u8", 0, "GET", "i4", 4),
        ("BITFIELD_RO", "bf"),
        ("BITFIELD_RO", "bf", "OVERFLOW", "SAT", "GET", "u8", 0),
        ("BITFIELD_RO", "nokey", "GET", "u8", 0),
    ])


def test_bitfield_errors_match_redis(pair):
    pair.same("RPUSH", "list", "x")
    same_all(pair, [
        ("BITFIELD", "bf", "GET", "u64", 0),
        ("BITFIELD", "bf", "GET", "i65", 0),
        ("BITFIELD", "bf", "GET", "u0", 0),
        ("BITFIELD", "bf", "GET", "U8", 0),
        ("BITFIELD", "bf", "GET", "x8", 0),
        ("BITFIELD", "bf", "GET", "u08", 0),
        ("BITFIELD", "bf", "GET", "u8\x00junk", 0),
        ("BITFIELD", "bf", "GET", "u8", -1),
        ("BITFIELD", "bf", "GET", "u8", "#-1"),
        ("BITFIELD", "bf", "GET", "u8", "x"),
        ("BITFIELD", "bf", "GET", "u8", "4294967296"),
        ("BITFIELD", "bf", "GET", "u8", "#536870912"),
        ("BITFIELD", "bf", "SET", "u8", 0, "x"),
        ("BITFIELD", "bf", "SET", "u8", 0),
        ("BITFIELD", "bf", "GET", "u8"),
        ("BITFIELD", "bf", "OVERFLOW"),
        ("BITFIELD", "bf", "OVERFLOW", "BAD", "GET", "u8", 0),
        ("BITFIELD", "bf", "BOGUS", "u8", 0),
        ("BITFIELD", "bf", "GET", "u8", 0, "SET"),
        ("EXISTS", "bf"),
        ("BITFIELD", "list", "GET", "u8", 0),
        ("BITFIELD", "list", "SET", "u8", 0, 1),
        ("BITFIELD", "list"),
        ("BITFIELD_RO", "list", "GET", "u8", 0),
        ("BITFIELD_RO", "list", "SET", "u8", 0, 1),
        ("BITFIELD_RO", "bf", "SET", "u8", 0, 1),
        ("BITFIELD_RO", "bf", "INCRBY", "u8", 0, 1, "GET", "u8", 0),
        ("BITFIELD_RO", "bf", "SET", "u8", 0, "x"),
        ("EXISTS", "bf"),
    ])


def test_bitfield_fail_reply_is_null_in_resp3(pair3):
    pair3.same("BITFIELD", "bf", "OVERFLOW", "FAIL", "SET", "u2", 0, 9, "SET", "u2", 0, 3)


def test_bit_commands_through_redis_py(r, r3):
    assert r.setbit("bits", 3, 1) == 0
    assert r.getbit("bits", 3) == 1
    assert r.bitcount("bits") == 1
    assert r.bitpos("bits", 1) == 3
    assert r.bitfield("bits").set("u4", 4, 9).get("u8", 0).execute() == [0, 25]
    assert r3.bitfield("bits").overflow("FAIL").incrby("u4", 4, 10).execute() == [None]
    assert r3.bitfield_ro("bits", "u8", 0) == [25]


# --- randomized comparison ---------------------------------------------------------------------


def _random_command(rng: random.Random) -> tuple:
    key = rng.choice(["{r}a", "{r}b", "{r}c"])
    ints = [0, 1, 7, 8, 9, 15, 16, 63, 64, 100, -1, -2, -8, -9, -100]
    choice = rng.random()
    if choice < 0.15:
        return ("SETBIT", key, rng.randint(0, 200), rng.choice([0, 1, 1]))
    if choice < 0.2:
        return ("GETBIT", key, rng.randint(0, 200))
    if choice < 0.35:
        extra = rng.choice([(), (rng.choice(ints), rng.choice(ints)),
                            (rng.choice(ints), rng.choice(ints), rng.choice(["BIT", "BYTE"]))])
        return ("BITCOUNT", key, *extra)
    if choice < 0.5:
        extra = rng.choice([(), (rng.choice(ints),), (rng.choice(ints), rng.choice(ints)),
                            (rng.choice(ints), rng.choice(ints), rng.choice(["BIT", "BYTE"]))])
        return ("BITPOS", key, rng.randint(0, 1), *extra)
    if choice < 0.6:
        op = rng.choice(["AND", "OR", "XOR", "NOT"])
        sources = rng.sample(["{r}a", "{r}b", "{r}c", "{r}none"], 1 if op == "NOT" else rng.randint(1, 3))
        return ("BITOP", op, key, *sources)
    if choice < 0.65:
        return ("SET", key, bytes(rng.randrange(256) for _ in range(rng.randint(0, 10))))
    args = []
    for _ in range(rng.randint(1, 4)):
        signed = rng.random() < 0.5
        kind = ("i%d" % rng.randint(1, 64)) if signed else ("u%d" % rng.randint(1, 63))
        offset = rng.choice([str(rng.randint(0, 150)), "#%d" % rng.randint(0, 10)])
        op = rng.choice(["GET", "SET", "INCRBY", "OVERFLOW"])
        if op == "GET":
            args += ["GET", kind, offset]
        elif op == "OVERFLOW":
            args += ["OVERFLOW", rng.choice(["WRAP", "SAT", "FAIL"])]
        else:
            value = rng.choice([rng.randint(-300, 300), rng.randint(-2**63, 2**63 - 1)])
            args += [op, kind, offset, value]
    return (rng.choice(["BITFIELD", "BITFIELD", "BITFIELD_RO"]), key, *args)


@pytest.mark.parametrize("seed", range(3))
def test_random_bit_commands_match_redis(pair, seed):
    rng = random.Random(seed)
    for _ in range(250):
        pair.same(*_random_command(rng))
        for key in ("{r}a", "{r}b", "{r}c"):
            pair.same("GET", key)


# --- effects --------------------------------------------------------------------------------


def test_bitfield_effect_holds_only_final_values():
    ctx = new_ctx()
    call(ctx, "SET", "k", b"\x01")
    ctx.db.effects.clear()
    call(ctx, "BITFIELD", "k", "OVERFLOW", "SAT", "INCRBY", "u8", 0, 300, "INCRBY", "i4", "#3", -1,
               "OVERFLOW", "FAIL", "SET", "u8", 40, 999)
    assert ctx.db.effects == [[b"BITFIELD", b"k", b"SET", b"u8", b"0", b"255", b"SET", b"i4", b"12", b"-1",
                               b"SET", b"u8", b"40", b"0"]]
    ctx.db.effects.clear()
    call(ctx, "BITFIELD", "k", "SET", "u8", 0, 255)  # no change: nothing to log
    call(ctx, "SETBIT", "k", 0, 1)
    assert ctx.db.effects == []


def test_bitop_effect_is_the_resulting_value():
    ctx = new_ctx()
    call(ctx, "SET", "a", b"\x0f")
    call(ctx, "SET", "d", b"x")
    ctx.db.effects.clear()
    call(ctx, "BITOP", "NOT", "d", "a")
    call(ctx, "BITOP", "AND", "d", "missing")
    call(ctx, "BITOP", "AND", "d", "missing")
    assert ctx.db.effects == [[b"SET", b"d", b"\xf0"], [b"DEL", b"d"]]


_KEYS = st.sampled_from(["a", "b", "c"])
_SMALL = st.integers(min_value=-20, max_value=80)
_FIELD = st.tuples(st.sampled_from(["i", "u"]), st.integers(1, 63)).map(lambda t: "%s%d" % t)
_bit_command = st.one_of(
    st.tuples(st.just("SETBIT"), _KEYS, st.integers(0, 100), st.integers(0, 1)),
    st.tuples(st.just("SET"), _KEYS, st.binary(max_size=8)),
    st.tuples(st.just("BITOP"), st.sampled_from(["AND", "OR", "XOR"]), _KEYS, _KEYS, _KEYS),
    st.tuples(st.just("BITOP"), st.just("NOT"), _KEYS, _KEYS),
    st.tuples(st.just("EXPIRE"), _KEYS, st.integers(1, 1000)),
    st.builds(
        lambda key, ops: ("BITFIELD", key, *[x for op in ops for x in op]),
        _KEYS,
        st.lists(st.one_of(
            st.tuples(st.just("OVERFLOW"), st.sampled_from(["WRAP", "SAT", "FAIL"])),
            st.tuples(st.sampled_from(["SET", "INCRBY"]), _FIELD, st.integers(0, 120).map(str), _SMALL),
            st.tuples(st.just("GET"), _FIELD, st.integers(0, 120).map(str)),
        ), max_size=5),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_bit_command, max_size=30))
def test_replaying_effects_gives_the_live_state(commands):
    live, replayed = run_and_replay(commands)
