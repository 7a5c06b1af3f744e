"""HyperLogLog: replies and the stored bytes must be identical to a real
redis-server 7.0 (sparse and dense encodings, cached cardinality), values must
move between the two servers with GET/SET, and logged effects must replay to the
live state whatever hll-sparse-max-bytes the replaying shard has."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refserver import keys_on_different_shards, same_all
from engine_util import call, new_ctx, run_and_replay

import durakv.shards.commands  # noqa: F401
from durakv.shards.shard_settings import SHARD_DEFAULTS
from durakv.shards.t_hll import DENSE_BYTES, dense_to_raw, pattern, raw_max, raw_to_dense

HEADER = b"HYLL\x01\x00\x00\x00" + bytes(7) + b"\x80"


def elements(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


@pytest.fixture
def sparse_max(pair):
    """Set hll-sparse-max-bytes on both servers; restores the default after."""
    def set_both(value: int) -> None:
        pair.same("CONFIG", "SET", "hll-sparse-max-bytes", value)
    yield set_both
    set_both(SHARD_DEFAULTS["hll-sparse-max-bytes"])


# --- the representation -------------------------------------------------------------------


def test_hash_picks_the_same_register_and_run_as_redis(redis_ref):
    """MurmurHash64A over the 8-byte block and tail paths: the register PFADD
    sets in Redis (read back with PFDEBUG GETREG) is the one pattern() names."""
    client = redis_ref.client()
    rng = random.Random(5)
    for size in list(range(0, 20)) + [31, 64, 100]:
        element = bytes(rng.randrange(256) for _ in range(size))
        client.delete("probe")
        client.pfadd("probe", element)
        registers = client.execute_command("PFDEBUG", "GETREG", "probe")
        nonzero = [(i, v) for i, v in enumerate(registers) if v]
        assert nonzero == [pattern(element)], (element, nonzero)
    client.close()


def test_register_packing_round_trips():
    rng = random.Random(1)
    registers = bytes(rng.randrange(64) for _ in range(16384))
    raw = int.from_bytes(registers, "little")
    dense = raw_to_dense(raw)
    assert len(dense) == DENSE_BYTES - 16
    assert dense_to_raw(dense) == raw
    other = bytes(rng.randrange(64) for _ in range(16384))
    merged = raw_max(raw, int.from_bytes(other, "little")).to_bytes(16384, "little")
    assert merged == bytes(max(a, b) for a, b in zip(registers, other))


def test_pfadd_bytes_match_redis_through_sparse_and_dense(pair):
    items = elements("e", 4000)
    for start in range(0, len(items), 50):
        pair.same("PFADD", "h", *items[start:start + 50])
        pair.same("GET", "h")
        if start % 500 == 0:
            pair.same("PFCOUNT", "h")
            pair.same("GET", "h")
    assert pair.same("STRLEN", "h") == DENSE_BYTES
    pair.same("PFCOUNT", "h")
    pair.same("GET", "h")


def test_one_element_at_a_time_matches_redis(pair):
    rng = random.Random(3)
    for i in range(1500):
        element = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 8, 9, 16, 33])))
        pair.same("PFADD", "h", element)
        if i % 100 == 0:
            pair.same("GET", "h")
    pair.same("GET", "h")
    pair.same("PFCOUNT", "h")


def test_cardinalities_match_redis_exactly(pair):
    for n in (0, 1, 10, 100, 1000, 5000, 30000):
        key = f"c{n}"
        items = elements(f"x{n}-", n)
        pair.same("PFADD", key, *items[:1])
        for start in range(1, n, 5000):
            pair.same("PFADD", key, *items[start:start + 5000])
        pair.same("PFCOUNT", key)
        pair.same("GET", key)


def test_pfadd_replies_and_creation_match_redis(pair):
    same_all(pair, [
        ("PFADD", "h"),
        ("GET", "h"),
        ("PFADD", "h"),
        ("PFADD", "h", "a", "b"),
        ("PFADD", "h", "a"),
        ("PFADD", "h", "a", "c"),
        ("PFCOUNT", "h"),
        ("PFCOUNT", "h"),
        ("GET", "h"),
        ("PFADD", "h", "d"),
        ("GET", "h"),  # the stale mark keeps the old cached bytes
        ("PFCOUNT", "h"),
        ("OBJECT", "ENCODING", "h"),
        ("PFCOUNT", "nokey"),
        ("EXISTS", "nokey"),
    ])


def test_pfadd_keeps_the_ttl(pair):
    pair.same("PFADD", "h", "a")
    pair.same("EXPIRE", "h", 1000)
    pair.same("PFADD", "h", *elements("t", 3000))
    pair.same("PFCOUNT", "h")
    ours, theirs = pair.both("TTL", "h")
    assert ours == theirs == b":1000\r\n"


def test_pfmerge_matches_redis(pair):
    pair.same("PFADD", "{m}s1", *elements("a", 100))
    pair.same("PFADD", "{m}s2", *elements("b", 300))
    pair.same("PFADD", "{m}d1", *elements("c", 5000))
    same_all(pair, [
        ("PFMERGE", "{m}out", "{m}s1", "{m}s2"),
        ("GET", "{m}out"),
        ("PFCOUNT", "{m}out"),
        ("PFMERGE", "{m}out", "{m}s1"),
        ("GET", "{m}out"),
        ("PFMERGE", "{m}s1", "{m}s2"),
        ("GET", "{m}s1"),
        ("PFMERGE", "{m}out2", "{m}s2", "{m}d1"),
        ("GET", "{m}out2"),
        ("PFMERGE", "{m}s2", "{m}d1", "{m}nokey"),
        ("GET", "{m}s2"),
        ("PFMERGE", "{m}empty"),
        ("GET", "{m}empty"),
        ("PFMERGE", "{m}empty", "{m}nokey"),
        ("GET", "{m}empty"),
        ("PFCOUNT", "{m}s1", "{m}s2", "{m}d1", "{m}nokey"),
        ("PFCOUNT", "{m}s1", "{m}out"),
        ("PFCOUNT", "{m}nokey", "{m}nokey2"),
    ])


def test_small_sparse_limit_matches_redis(pair, sparse_max):
    for limit in (0, 30, 200):
        sparse_max(limit)
        pair.same("PFADD", f"{{l}}h{limit}", *elements("s", 40))
        pair.same("GET", f"{{l}}h{limit}")
        pair.same("PFADD", f"{{l}}k{limit}", "a")
        pair.same("PFMERGE", f"{{l}}k{limit}", f"{{l}}h{limit}")
        pair.same("GET", f"{{l}}k{limit}")


def test_values_move_between_redis_and_durakv(server, redis_ref):
    ours = server.client()
    theirs = redis_ref.client()
    ours.flushall()
    theirs.flushall()
    theirs.pfadd("from-redis", *elements("r", 250))
    ours.set("from-redis", theirs.get("from-redis"))
    ours.pfadd("from-redis", *elements("q", 250))
    theirs.pfadd("from-redis", *elements("q", 250))
    assert ours.get("from-redis") == theirs.get("from-redis")
    assert ours.pfcount("from-redis") == theirs.pfcount("from-redis")

    ours.pfadd("from-durakv", *elements("d", 6000))
    theirs.set("from-durakv", ours.get("from-durakv"))
    assert theirs.pfcount("from-durakv") == ours.pfcount("from-durakv")
    assert ours.get("from-durakv") == theirs.get("from-durakv")
    ours.close()
    theirs.close()


# --- errors ------------------------------------------------------------------------------------


def test_type_errors_match_redis(pair):
    same_all(pair, [
        ("RPUSH", "{e}list", "a"),
        ("SET", "{e}str", "not an hll at all"),
        ("SET", "{e}int", "12345"),
        ("SET", "{e}empty", ""),
        ("PFADD", "{e}h", "a"),
    ])
    for key in ("{e}list", "{e}str", "{e}int", "{e}empty"):
        same_all(pair, [
            ("PFADD", key, "a"),
            ("PFADD", key),
            ("PFCOUNT", key),
            ("PFCOUNT", key, "{e}h"),
            ("PFCOUNT", "{e}h", key),
            ("PFMERGE", key, "{e}h"),
            ("PFMERGE", "{e}h", key),
            ("PFMERGE", "{e}new", key),
        ])
    pair.same("EXISTS", "{e}new")


def test_corrupted_values_are_detected_like_redis(pair):
    same_all(pair, [
        ("PFADD", "h", "a", "b", "c"),
        ("APPEND", "h", "hello"),
        ("PFCOUNT", "h"),
        ("PFCOUNT", "h", "other"),
        ("DEL", "h"),
        ("PFADD", "h", "a", "b", "c"),
        ("SETRANGE", "h", 0, "0123"),
        ("PFCOUNT", "h"),
        ("DEL", "h"),
        ("PFADD", "h", "a", "b", "c"),
        ("SETRANGE", "h", 4, "x"),
        ("PFCOUNT", "h"),
        ("DEL", "h"),
        ("PFADD", "h", "a", "b", "c"),
        ("SETRANGE", "h", 4, "\x00"),
        ("PFCOUNT", "h"),
        # sparse runs that overshoot or fall short of 16384 registers
        ("SET", "{c}over", HEADER + b"\x7f\xff\x80"),
        ("PFCOUNT", "{c}over"),
        ("PFCOUNT", "{c}over", "{c}x"),
        ("PFMERGE", "{c}x", "{c}over"),
        ("SET", "{c}short", HEADER + b"\x40\x00\x40\x00"),
        ("PFADD", "{c}short", "a"),
        ("PFCOUNT", "{c}short"),
        ("SET", "{c}exact", HEADER + b"\x7f\xfe\x80"),
        ("PFCOUNT", "{c}exact"),
        ("PFADD", "{c}exact", "a"),
        ("GET", "{c}exact"),
        # every dense register at 63: the estimate divides by zero in Redis too
        ("SET", "{c}full", b"HYLL" + bytes(11) + b"\x80" + b"\xff" * 12288),
        ("PFCOUNT", "{c}full"),
        ("PFCOUNT", "{c}full", "{c}x"),
        ("GET", "{c}full"),
    ])


@pytest.mark.parametrize("seed", range(2))
def test_random_corruption_replies_match_redis(pair, seed):
    rng = random.Random(seed)
    for _ in range(60):
        pair.same("DEL", "h")
        pair.same("PFADD", "h", *[str(rng.random()) for _ in range(rng.choice([1, 20, 300]))])
        for _ in range(rng.randint(1, 3)):
            size = pair.same("STRLEN", "h")
            pair.same("SETRANGE", "h", rng.randrange(16, size), bytes([rng.randrange(256)]))
        pair.same("PFCOUNT", "h", "other")
        pair.same("PFCOUNT", "h")


def test_hll_commands_through_redis_py(r):
    assert r.pfadd("hll", "a", "b", "c") == 1
    assert r.pfadd("hll", "a") == 0
    assert r.pfcount("hll") == 3
    assert r.pfmerge("{x}dest", "{x}src") is True
    dest, src = keys_on_different_shards()  # a cross-shard transaction through the router
    r.delete(dest, src)
    r.pfadd(src, "x", "y")
    assert r.pfmerge(dest, src) is True
    assert r.pfcount(dest) == 2


# --- effects ----------------------------------------------------------------------------------


def test_effects_of_each_command():
    ctx = new_ctx()
    call(ctx, "PFADD", "h", "a")
    value = bytes(ctx.db.data[b"h"])
    assert ctx.db.effects == [[b"SET", b"h", value, b"KEEPTTL"]]
    ctx.db.effects.clear()
    assert call(ctx, "PFCOUNT", "h") == 1
    assert ctx.db.effects == [[b"SETRANGE", b"h", b"8", (1).to_bytes(8, "little")]]
    ctx.db.effects.clear()
    assert call(ctx, "PFCOUNT", "h") == 1  # served from the cache: no write
    assert call(ctx, "PFADD", "h", "a") == 0
    assert ctx.db.effects == []
    call(ctx, "PFADD", "d", *elements("z", 3000))
    assert len(ctx.db.data[b"d"]) == DENSE_BYTES
    ctx.db.effects.clear()
    call(ctx, "PFADD", "d", "more", "and more")  # dense: logged as sent
    assert ctx.db.effects == [[b"PFADD", b"d", b"more", b"and more"]]
    ctx.db.effects.clear()
    call(ctx, "PFMERGE", "d", "h")
    assert ctx.db.effects == [[b"PFMERGE", b"d", b"h"]]


_hll_command = st.one_of(
    st.tuples(st.just("PFADD"), st.sampled_from(["a", "b", "c"]),
              st.lists(st.binary(max_size=12), max_size=60)).map(lambda t: (t[0], t[1], *t[2])),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4).map(lambda ks: ("PFMERGE", *ks)),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3).map(lambda ks: ("PFCOUNT", *ks)),
    st.tuples(st.just("EXPIRE"), st.sampled_from(["a", "b"]), st.integers(1, 1000)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_hll_command, max_size=25), st.sampled_from([0, 40, 300, 3000]),
       st.sampled_from([0, 40, 300, 3000]))
def test_replaying_effects_gives_the_live_state(commands, live_limit, replay_limit):
    run_and_replay(commands, {"hll-sparse-max-bytes": live_limit}, {"hll-sparse-max-bytes": replay_limit})
