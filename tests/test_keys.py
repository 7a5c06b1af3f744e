"""Keyspace commands (db.c, expire.c) against durakv and a real redis-server 7.0
side by side. Keys deliberately spread over both shards wherever the command
allows it: durakv splits DEL/EXISTS/UNLINK/TOUCH/MGET and walks SCAN and KEYS
across shards, and the merged answers must equal the single-process ones."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from durakv.shards.glob import glob_match
from durakv.shards.slots import key_slot
from durakv.shards.numbers import LLONG_MAX, LLONG_MIN

FAR_MS = 4102444800000  # 2100-01-01, an absolute expiry both servers agree on
ACTIVE_EXPIRY_DEADLINE_S = 20


def run_same(pair, script: list[tuple]) -> list:
    return [pair.same(*cmd) for cmd in script]


def keys_on_both_shards(count: int, prefix: str = "k") -> list[str]:
    keys = [f"{prefix}:{i}" for i in range(count)]
    assert {key_slot(k.encode()) < 8192 for k in keys} == {True, False}
    return keys


def test_del_unlink_exists_touch_type_across_shards(pair):
    keys = keys_on_both_shards(20)
    for key in keys[::2]:
        pair.same("SET", key, "v")
    pair.same("RPUSH", keys[1], "x")
    run_same(pair, [
        ("EXISTS", *keys),
        ("EXISTS", keys[0], keys[0], keys[0], "nope"),
        ("TOUCH", *keys),
        ("TYPE", keys[0]),
        ("TYPE", keys[1]),
        ("TYPE", "nope"),
        ("DEL", *keys[:6], "nope", keys[0]),
        ("EXISTS", *keys),
        ("UNLINK", *keys[6:12], keys[6]),
        ("EXISTS", *keys),
        ("MGET", *keys, "nope"),
        ("DEL", *keys),
        ("DEL", "nope"),
        ("DEL",), ("UNLINK",), ("EXISTS",), ("TOUCH",), ("TYPE",), ("TYPE", "a", "b"),
    ])


EXPIRE_COMMANDS = ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"]


def test_expire_options_nx_xx_gt_lt(pair):
    """Every option combination against a missing key, a persistent key and
    keys with an earlier and a later deadline, using absolute times so both
    servers hold identical deadlines."""
    options = [(), ("NX",), ("XX",), ("GT",), ("LT",), ("nx",), ("XX", "GT"), ("XX", "LT"), ("GT", "XX"),
               ("NX", "XX"), ("NX", "GT"), ("LT", "NX"), ("GT", "LT"), ("FOO",), ("GT", "GT"), ("xx", "xx")]
    targets_ms = [FAR_MS - 10_000, FAR_MS + 10_000]
    for option, target_ms, state in itertools.product(options, targets_ms, ["missing", "persistent", "volatile"]):
        pair.same("DEL", "e")
        if state != "missing":
            pair.same("SET", "e", "v")
        if state == "volatile":
            pair.same("PEXPIREAT", "e", FAR_MS)
        pair.same("PEXPIREAT", "e", target_ms, *option)
        pair.same("PEXPIRETIME", "e")
        pair.same("EXPIREAT", "e", target_ms // 1000 + 1, *option)
        pair.same("EXPIRETIME", "e")


def test_expire_relative_replies_and_ttls(pair):
    pair.same("SET", "r", "v")
    for cmd, value, ttl_s in (("EXPIRE", 100, 100), ("PEXPIRE", 200_000, 200)):
        pair.same(cmd, "r", value)
        for conn in (pair.ours, pair.theirs):
            assert ttl_s - 1 <= conn.value("TTL", "r") <= ttl_s
            assert (ttl_s - 1) * 1000 <= conn.value("PTTL", "r") <= ttl_s * 1000
    run_same(pair, [
        ("EXPIRE", "r", 50, "GT"),
        ("EXPIRE", "r", 500, "LT"),
        ("EXPIRE", "r", 50, "LT"),
        ("EXPIRE", "r", 100, "NX"),
        ("EXPIRE", "r", 100, "XX"),
        ("PERSIST", "r"),
        ("EXPIRE", "r", 100, "GT"),
        ("EXPIRE", "r", 100, "LT"),
        ("PERSIST", "r"),
        ("PERSIST", "r"),
        ("PERSIST", "nope"),
    ])


EXPIRE_ERRORS = [
    ("SET", "x", "v"),
    ("EXPIRE", "x", "abc"),
    ("EXPIRE", "x", "1.5"),
    ("EXPIRE", "x", ""),
    ("EXPIRE", "x", str(LLONG_MAX)),
    ("EXPIRE", "x", str(LLONG_MAX // 1000)),
    ("EXPIRE", "x", str(LLONG_MIN)),
    ("EXPIRE", "x", str(LLONG_MIN // 1000 - 1)),
    ("EXPIRE", "x", str(LLONG_MIN // 1000)),
    ("EXPIRE", "x", str(-(LLONG_MAX // 1000))),
    ("EXPIREAT", "x", str(LLONG_MIN // 1000)),
    ("TTL", "x"),
    ("PEXPIRE", "x", str(LLONG_MAX)),
    ("PEXPIRE", "x", str(LLONG_MAX - 10**13)),
    ("EXPIREAT", "x", str(LLONG_MAX // 1000 + 1)),
    ("EXPIREAT", "x", str(LLONG_MAX // 1000)),
    ("PEXPIRETIME", "x"),
    ("PEXPIREAT", "x", str(LLONG_MAX)),
    ("PEXPIRETIME", "x"),
    ("EXPIRETIME", "x"),
    ("TTL", "x"),
    ("EXPIRE", "x", "100", "BAD"),
    ("EXPIRE", "x", "abc", "BAD"),
    ("EXPIRE", "x", "abc", "NX", "XX"),
    ("EXPIRE", "nope", "100"),
    ("EXPIRE", "nope", "abc"),
    ("EXPIRE", "x"),
    ("EXPIRE",),
    ("TTL",), ("PTTL", "a", "b"), ("EXPIRETIME",), ("PERSIST",),
    ("EXPIRE", "x", "-1"),
    ("EXISTS", "x"),
    ("SET", "x", "v"),
    ("PEXPIRE", "x", "0"),
    ("EXISTS", "x"),
    ("SET", "x", "v"),
    ("EXPIREAT", "x", "1"),
    ("EXISTS", "x"),
    ("SET", "x", "v"),
    ("EXPIRE", "x", "0", "XX"),
    ("EXISTS", "x"),
    ("EXPIRE", "x", "-10", "LT"),
    ("EXISTS", "x"),
]


def test_expire_errors_and_past_deadlines(pair):
    run_same(pair, EXPIRE_ERRORS)


def test_ttl_family(pair):
    run_same(pair, [
        ("TTL", "nope"), ("PTTL", "nope"), ("EXPIRETIME", "nope"), ("PEXPIRETIME", "nope"),
        ("SET", "p", "v"),
        ("TTL", "p"), ("PTTL", "p"), ("EXPIRETIME", "p"), ("PEXPIRETIME", "p"),
        ("PEXPIREAT", "p", FAR_MS + 499),
        ("EXPIRETIME", "p"), ("PEXPIRETIME", "p"),
        ("PEXPIREAT", "p", FAR_MS + 500),
        ("EXPIRETIME", "p"), ("PEXPIRETIME", "p"),
        ("RPUSH", "l", "x"),
        ("PEXPIREAT", "l", FAR_MS),
        ("PEXPIRETIME", "l"),
    ])


def test_rename_and_copy(pair):
    run_same(pair, [
        ("SET", "{x}a", "1"),
        ("RENAME", "{x}a", "{x}b"),
        ("GET", "{x}b"),
        ("RENAME", "{x}a", "{x}b"),
        ("RENAME", "{x}b", "{x}b"),
        ("RENAME", "{x}nope", "{x}nope"),
        ("RENAMENX", "{x}b", "{x}b"),
        ("RENAMENX", "{x}nope", "{x}b"),
        ("SET", "{x}c", "3"),
        ("RENAMENX", "{x}b", "{x}c"),
        ("RENAMENX", "{x}b", "{x}d"),
        ("PEXPIREAT", "{x}d", FAR_MS),
        ("RENAME", "{x}d", "{x}c"),
        ("PEXPIRETIME", "{x}c"),
        ("GET", "{x}c"),
        ("SET", "{x}p", "persistent"),
        ("PEXPIREAT", "{x}q", FAR_MS),
        ("SET", "{x}q", "volatile", "PXAT", FAR_MS),
        ("RENAME", "{x}p", "{x}q"),
        ("PEXPIRETIME", "{x}q"),
        ("RPUSH", "{x}list", "a", "b"),
        ("RENAME", "{x}list", "{x}l2"),
        ("LRANGE", "{x}l2", "0", "-1"),
        ("COPY", "{x}l2", "{x}l3"),
        ("RPUSH", "{x}l3", "c"),
        ("LRANGE", "{x}l2", "0", "-1"),
        ("LRANGE", "{x}l3", "0", "-1"),
        ("COPY", "{x}c", "{x}e"),
        ("COPY", "{x}c", "{x}e"),
        ("COPY", "{x}c", "{x}e", "REPLACE"),
        ("PEXPIRETIME", "{x}e"),
        ("COPY", "{x}c", "{x}c"),
        ("COPY", "{x}nope", "{x}e"),
        ("COPY", "{x}nope", "{x}nope"),
        ("COPY", "{x}c", "{x}e", "DB", "0", "REPLACE"),
        ("COPY", "{x}c", "{x}e", "db", "0", "replace", "replace"),
        ("COPY", "{x}c", "{x}e", "DB", "abc"),
        ("COPY", "{x}c", "{x}e", "DB", "99999999999"),
        ("COPY", "{x}c", "{x}e", "FOO"),
        ("COPY", "{x}c", "{x}e", "DB"),
        ("COPY", "{x}c"),
        ("RENAME", "{x}c"),
        ("RENAMENX",),
    ])


def test_copy_to_another_db_is_a_cluster_error(r):
    r.set("{x}a", "1")
    for args in (("DB", "1"), ("DB", "1", "REPLACE"), ("DB", "-1")):
        with pytest.raises(Exception, match="^Copying to another database is not allowed in cluster mode$"):
            r.execute_command("COPY", "{x}a", "{x}b", *args)
    with pytest.raises(Exception, match="^syntax error$"):
        r.execute_command("COPY", "{x}a", "{x}b", "DB", "1", "FOO")


def test_rename_and_copy_across_shards_run_through_the_router(r):
    """Keys on two shards: one cross-shard transaction (server/txn.py), as on one Redis."""
    r.delete("a", "b")
    r.set("a", "1")
    assert key_slot(b"a") != key_slot(b"b")
    assert r.execute_command("COPY", "a", "b") == 1
    assert r.execute_command("RENAMENX", "a", "b") == 0
    assert r.execute_command("RENAME", "a", "b") is True
    assert r.mget("a", "b") == [None, b"1"]


GLOB_KEYS = [
    "", "a", "b", "ab", "abc", "aXc", "a*c", "a?c", "a[c", "a]c", "a\\c", "a-c", "hello", "hallo",
    "hxllo", "hllo", "heeeello", "h\nllo", "^x", "!x", "]", "[", "\\", "-", "\x80", "\xff", "0",
    "a0c", "abcabc", "x*", "foo:1:bar", "foo:22:bar", "user:{1000}", "\x00", "ác",
]
GLOB_PATTERNS = [
    "*", "**", "", "?", "a*", "*c", "a?c", "a*c", "h?llo", "h*llo", "h[ae]llo", "h[^e]llo",
    "h[a-b]llo", "h[b-a]llo", "[a-]", "[a-", "[-a]", "[]", "[^]", "[", "a[", "a\\", "\\a", "a\\*c",
    "a\\?c", "a[\\]]c", "a[\\", "[\\]", "a[]]c", "*[", "[*", "\\", "\\\\", "a[^b-z]c", "[!x]*",
    "*o*", "foo:*:bar", "foo:?:bar", "foo:??:bar", "user:{*}", "[\x80-\xff]", "[a-\xff]", "[\x00-a]",
    "[^a-c]", "?*", "*?", "a**c", "h*l*o", "*\\", "[0-9]", "a[0-9]c", "**x**", "[[]", "x[*]",
]


def test_keys_glob_patterns_match_redis(pair):
    """Redis' stringmatchlen quirks: escapes, unclosed and inverted ranges,
    signed-char ranges, and the empty key matched only by the empty pattern."""
    for i, key in enumerate(GLOB_KEYS):
        pair.same("SET", key.encode("latin-1"), i)
    for pattern in GLOB_PATTERNS:
        pair.same_unordered("KEYS", pattern.encode("latin-1"))


def test_keys_random_patterns_match_redis(pair):
    rng = random.Random(2024)
    keys = ["".join(rng.choice("ab[]^-*?\\x") for _ in range(rng.randint(1, 5))) for _ in range(150)]
    for key in keys:
        pair.same("SET", key, "1")
    for _ in range(400):
        pattern = "".join(rng.choice("ab[]^-*?\\x") for _ in range(rng.randint(0, 6)))
        pair.same_unordered("KEYS", pattern)


def test_glob_match_against_redis_stringmatch(pair):
    """Each pattern is checked on one key at a time, through KEYS, so glob_match
    (also used by SCAN MATCH and CONFIG GET) is compared directly with Redis."""
    rng = random.Random(9)
    alphabet = "ab\\[]^-*?"
    for _ in range(150):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
        pair.same("FLUSHALL")
        pair.same("SET", key, "1")
        theirs = pair.same_unordered("KEYS", pattern)
        assert glob_match(pattern.encode(), key.encode()) == (theirs == [key.encode()]), (pattern, key)


def test_keys_many_stars_match_redis(pair):
    """Patterns with several stars over longer keys: the leftmost-segment matching
    that keeps the compiled pattern linear must accept exactly what Redis does."""
    rng = random.Random(77)
    keys = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 12))) for _ in range(120)]
    for key in keys:
        pair.same("SET", key, "1")
    for _ in range(300):
        pattern = "".join(rng.choice(["a", "b", "?", "*", "*", "[ab]"]) for _ in range(rng.randint(1, 8)))
        pair.same_unordered("KEYS", pattern)


def test_keys_nested_stars_do_not_backtrack_exponentially(pair):
    """Redis' keyspace.tcl regression: a pattern of 20 stars that cannot match a
    40-byte key must answer (a backtracking matcher never finishes)."""
    pair.same("FLUSHALL")
    pair.same("SET", "a" * 40, "1")
    pair.same("KEYS", "a*" * 20 + "b")
    pair.same("KEYS", "a*" * 20)


def test_keys_errors(pair):
    run_same(pair, [("KEYS",), ("KEYS", "a", "b"), ("KEYS", "*")])


def scan_all(conn, *options) -> tuple[list[bytes], int]:
    cursor = b"0"
    seen: list[bytes] = []
    calls = 0
    while True:
        cursor, batch = conn.value("SCAN", cursor, *options)
        calls += 1
        seen += batch
        if cursor == b"0":
            return seen, calls
        assert calls < 100_000


@pytest.mark.parametrize("count", [None, 1, 7, 100, 5000])
def test_full_scan_returns_every_key_exactly_once(pair, count):
    keys = keys_on_both_shards(1000, "scan")
    for conn in (pair.ours, pair.theirs):
        assert set(conn.pipeline([("SET", key, "v") for key in keys])) == {b"+OK\r\n"}
    options = () if count is None else ("COUNT", count)
    ours, _ = scan_all(pair.ours, *options)
    theirs, _ = scan_all(pair.theirs, *options)
    assert len(ours) == len(set(ours)) == 1000
    assert sorted(ours) == sorted(theirs) == sorted(k.encode() for k in keys)


def test_scan_match_type_and_empty_database(pair):
    assert scan_all(pair.ours)[0] == []
    keys = keys_on_both_shards(60, "m")
    for i, key in enumerate(keys):
        kind = i % 4
        for conn in (pair.ours, pair.theirs):
            if kind == 0:
                conn.call("SET", key, "v")
            elif kind == 1:
                conn.call("RPUSH", key, "v")
            elif kind == 2:
                conn.call("HSET", key, "f", "v")
            else:
                conn.call("SADD", key, "v")
    for options in [("MATCH", "m:1*"), ("TYPE", "string"), ("TYPE", "LIST"), ("TYPE", "hash"),
                    ("TYPE", "set"), ("TYPE", "zset"), ("TYPE", "nosuchtype"), ("MATCH", "m:*", "TYPE", "set"),
                    ("COUNT", "3", "MATCH", "*5"), ("MATCH", "nomatch*"), ("MATCH", "a", "MATCH", "m:2*")]:
        ours, _ = scan_all(pair.ours, *options)
        theirs, _ = scan_all(pair.theirs, *options)
        assert sorted(ours) == sorted(theirs), options
        assert len(ours) == len(set(ours))


SCAN_ERRORS = [
    ("SCAN", "abc"),
    ("SCAN", " 0"),
    ("SCAN", "0x10"),
    ("SCAN", "18446744073709551616"),
    ("SCAN", "-18446744073709551616"),
    ("SCAN", "1.5"),
    ("SCAN", "0", "COUNT", "0"),
    ("SCAN", "0", "COUNT", "-1"),
    ("SCAN", "0", "COUNT", "abc"),
    ("SCAN", "0", "COUNT"),
    ("SCAN", "0", "MATCH"),
    ("SCAN", "0", "TYPE"),
    ("SCAN", "0", "FOO", "bar"),
    ("SCAN", "abc", "FOO"),
    ("SCAN",),
    ("SCAN", "18446744073709551615"),
    ("SCAN", "-1"),
]


def test_scan_cursor_and_option_errors(pair):
    run_same(pair, SCAN_ERRORS)


@pytest.mark.parametrize("cursor", ["0", "", "+0", "00"])
def test_scan_spellings_of_cursor_zero_walk_the_whole_keyspace(pair, cursor):
    keys = keys_on_both_shards(30, "z")
    for conn in (pair.ours, pair.theirs):
        conn.pipeline([("SET", key, "v") for key in keys])
    for conn in (pair.ours, pair.theirs):
        next_cursor, seen = conn.value("SCAN", cursor, "COUNT", 1000)
        while next_cursor != b"0":
            next_cursor, batch = conn.value("SCAN", next_cursor, "COUNT", 1000)
            seen += batch
        assert sorted(seen) == sorted(k.encode() for k in keys)


def test_scan_cursor_is_positional_not_a_session(r):
    keys = keys_on_both_shards(200, "pos")
    for key in keys:
        r.set(key, "v")
    cursor, first = r.scan(0, count=5)
    again_cursor, again = r.scan(0, count=5)
    assert (cursor, sorted(first)) == (again_cursor, sorted(again))
    resumed = r.scan(cursor, count=5)
    assert set(resumed[1]).isdisjoint(first)


def test_randomkey(pair, r):
    pair.same("RANDOMKEY")
    pair.same("RANDOMKEY", "x")
    low = next(k for k in (f"r{i}" for i in range(100)) if key_slot(k.encode()) < 8192)
    high = next(k for k in (f"r{i}" for i in range(100)) if key_slot(k.encode()) >= 8192)
    r.set(low, "1")
    r.set(high, "1")
    seen = {r.randomkey() for _ in range(200)}
    assert seen == {low.encode(), high.encode()}


def test_randomkey_skips_expired_keys(r):
    r.set("gone", "v", px=1)
    r.set("stays", "v")
    time.sleep(0.01)
    assert {r.randomkey() for _ in range(50)} == {b"stays"}


OBJECT_SCRIPT = [
    ("SET", "int", "12345"),
    ("SET", "neg", "-1"),
    ("SET", "big", "12345678901234567890"),
    ("SET", "max", str(LLONG_MAX)),
    ("SET", "lead0", "012"),
    ("SET", "space", " 1"),
    ("SET", "emb", "x" * 44),
    ("SET", "raw", "x" * 45),
    ("SET", "shared", "9999"),
    ("SET", "unshared", "10000"),
    ("SET", "zero", "0"),
    ("SETRANGE", "sr", "0", "12"),
    ("APPEND", "ap", "12"),
    ("APPEND", "ap2", "x"),
    ("APPEND", "ap2", "y"),
    ("INCR", "cnt"),
    ("INCRBY", "cnt2", "100000"),
    ("INCRBYFLOAT", "fl", "1.5"),
    ("SET", "{m}oved", "7"),
    ("RENAME", "{m}oved", "{m}oved2"),
]


def test_object_subcommands(pair):
    run_same(pair, OBJECT_SCRIPT)
    names = [cmd[1] for cmd in OBJECT_SCRIPT if cmd[0] != "RENAME"] + ["{m}oved2"]
    for name in names:
        pair.same("OBJECT", "ENCODING", name)
        pair.same("OBJECT", "REFCOUNT", name)
        pair.same("OBJECT", "FREQ", name)
    run_same(pair, [
        ("OBJECT", "ENCODING", "nope"),
        ("OBJECT", "REFCOUNT", "nope"),
        ("OBJECT", "IDLETIME", "nope"),
        ("OBJECT", "FREQ", "nope"),
        ("OBJECT", "HELP"),
        ("object", "help"),
        ("OBJECT", "HELP", "x"),
        ("OBJECT",),
        ("OBJECT", "FOO"),
        ("OBJECT", "FOO", "bar"),
        ("OBJECT", "ENCODING"),
        ("OBJECT", "ENCODING", "a", "b"),
    ])


def test_object_idletime_grows(r):
    r.set("idle", "v")
    time.sleep(2.1)
    assert r.object("idletime", "idle") >= 2


def test_active_expiry_removes_keys_nobody_reads(server_factory):
    """Volatile keys disappear from DBSIZE (which counts without touching keys)
    while no command reads them: the shards' active expiry cycle deletes them."""
    srv = server_factory()
    client = srv.client()
    keys = keys_on_both_shards(300, "ae")
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, "v", px=100)
    pipe.set("keeper", "v")
    pipe.execute()
    deadline = time.monotonic() + ACTIVE_EXPIRY_DEADLINE_S
    while client.dbsize() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.dbsize() == 1
    assert client.keys("*") == [b"keeper"]
    assert int(client.info("stats")["expired_keys"]) == 300


def test_keyspace_replies_in_resp3(pair3):
    run_same(pair3, [
        ("SET", "{a}1", "x"),
        ("RENAMENX", "{a}1", "{a}2"),
        ("TYPE", "{a}2"),
        ("OBJECT", "ENCODING", "nope"),
        ("SCAN", "0", "COUNT", "0"),
        ("TTL", "{a}2"),
        ("OBJECT", "HELP"),
    ])
