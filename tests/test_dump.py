"""DUMP and RESTORE against a real redis-server 7.0: payloads go both ways
(durakv's DUMP restores on Redis, Redis' DUMP restores here) with the same
values and the same encodings, the bytes equal Redis' wherever Redis' own
choice is deterministic and uncompressed, errors match, and a RESTORE's logged
effect replays to the same state."""

from __future__ import annotations

import struct

import pytest
from engine_util import call, new_ctx
from refserver import Pair, decode

import durakv.shards.commands  # noqa: F401
from durakv.shards.engine import replay, state_of
from durakv.shards.rdb.crc64 import crc64
from durakv.shards.resp import ReplyError

FAR_MS = 4102444800000  # 2100-01-01

# (setup commands, key): one value per type and encoding.
VALUES = [
    ([("SET", "s", "hello")], "s"),
    ([("SET", "s", "")], "s"),
    ([("SET", "s", "-128")], "s"),
    ([("SET", "s", "32767")], "s"),
    ([("SET", "s", "-2147483648")], "s"),
    ([("SET", "s", "2147483648")], "s"),
    ([("SET", "s", "007")], "s"),
    ([("SET", "s", "x" * 300)], "s"),
    ([("SET", "s", "abcdefghij" * 50)], "s"),
    ([("SETBIT", "s", "100", "1")], "s"),
    ([("PFADD", "s", "a", "b", "c")], "s"),
    ([("RPUSH", "l", "a", "1", "-1", "127", "128", "-4096", "4095", "70000", "-8388608", "2147483647",
       "9223372036854775807", "-9223372036854775808", "9223372036854775808", "x" * 63, "y" * 64, "z" * 5000)],
     "l"),
    ([("RPUSH", "l", *[str(i) * 7 for i in range(3000)])], "l"),
    ([("SADD", "si", "1", "2", "-3")], "si"),
    ([("SADD", "si", "1", "70000")], "si"),
    ([("SADD", "si", "5", "-9000000000")], "si"),
    ([("SADD", "st", "a", "b", "1")], "st"),
    ([("SADD", "st", *[str(i) for i in range(600)])], "st"),
    ([("HSET", "h", "a", "1", "b", "xx", "n", "-77777")], "h"),
    ([("HSET", "h", "f", "v" * 65)], "h"),
    ([("HSET", "h", *[x for i in range(600) for x in (f"f{i}", str(i))])], "h"),
    ([("ZADD", "z", "1", "a", "2.5", "b", "-0", "c", "inf", "d", "-inf", "e", "1e20", "f", "0.1", "g")], "z"),
    ([("ZADD", "z", *[x for i in range(200) for x in (str(i / 7), f"m{i}")])], "z"),
    ([("ZADD", "z", "1", "m" * 100, "-0", "n")], "z"),
]

# Values whose layout Redis does not leave to a hash table's order: with
# rdbcompression off, durakv's DUMP must be Redis' bytes.
NOT_BYTE_EXACT = {16, 17, 20}


def contents(conn, key: str) -> object:
    kind = conn.value("TYPE", key)
    if kind == b"string":
        return conn.value("GET", key)
    if kind == b"list":
        return conn.value("LRANGE", key, 0, -1)
    if kind == b"set":
        return sorted(conn.value("SMEMBERS", key))
    if kind == b"hash":
        flat = conn.value("HGETALL", key)
        return sorted(zip(flat[::2], flat[1::2]))
    return conn.value("ZRANGE", key, 0, -1, "WITHSCORES")


def setup_both(p: Pair, commands: list[tuple]) -> None:
    for command in commands:
        p.same(*command)


@pytest.mark.parametrize("case", range(len(VALUES)))
def test_payloads_cross_between_durakv_and_redis(pair, case):
    commands, key = VALUES[case]
    setup_both(pair, commands)
    ours = pair.ours.value("DUMP", key)
    theirs = pair.theirs.value("DUMP", key)  # LZF-compressed where Redis finds it worth it
    if case not in NOT_BYTE_EXACT:
        pair.theirs.value("CONFIG", "SET", "rdbcompression", "no")
        try:
            assert ours == pair.theirs.value("DUMP", key)
        finally:
            pair.theirs.value("CONFIG", "SET", "rdbcompression", "yes")
    # each server restores the other's payload
    assert pair.theirs.value("RESTORE", "from_durakv", 0, ours) == b"OK"
    assert pair.ours.value("RESTORE", "from_redis", 0, theirs) == b"OK"
    expected = contents(pair.theirs, key)
    assert contents(pair.ours, key) == expected
    assert contents(pair.ours, "from_redis") == expected
    assert contents(pair.theirs, "from_durakv") == expected
    assert pair.ours.value("OBJECT", "ENCODING", "from_redis") == pair.theirs.value("OBJECT", "ENCODING", "from_durakv")
    pair.same("OBJECT", "ENCODING", key)


def test_restore_converts_encodings_by_the_current_config(pair):
    setup_both(pair, [
        ("HSET", "h", *[x for i in range(5) for x in (f"f{i}", "v" * 100 if i == 4 else "v")]),
        ("ZADD", "z", *[x for i in range(5) for x in (str(i), f"m{i}")]),
        ("SADD", "s", *[str(i) for i in range(5)]),
        ("CONFIG", "SET", "hash-max-listpack-value", "1000"),
        ("HSET", "h2", *[x for i in range(5) for x in (f"f{i}", "v" * 100)]),
        ("CONFIG", "SET", "hash-max-listpack-value", "64"),
    ])
    dumps = {key: pair.theirs.value("DUMP", key) for key in ("h", "z", "s", "h2")}
    try:
        setup_both(pair, [
            ("CONFIG", "SET", "hash-max-listpack-entries", "2"),
            ("CONFIG", "SET", "zset-max-listpack-entries", "2"),
            ("CONFIG", "SET", "set-max-intset-entries", "2"),
        ])
        for key, payload in dumps.items():
            pair.same("RESTORE", f"{key}:small", 0, payload)
            pair.same("OBJECT", "ENCODING", f"{key}:small")
        setup_both(pair, [
            ("CONFIG", "SET", "hash-max-listpack-entries", "512"),
            ("CONFIG", "SET", "zset-max-listpack-entries", "128"),
            ("CONFIG", "SET", "set-max-intset-entries", "512"),
        ])
        for key, payload in dumps.items():
            pair.same("RESTORE", f"{key}:big", 0, payload)
            pair.same("OBJECT", "ENCODING", f"{key}:big")
    finally:
        setup_both(pair, [
            ("CONFIG", "SET", "hash-max-listpack-entries", "512"),
            ("CONFIG", "SET", "zset-max-listpack-entries", "128"),
            ("CONFIG", "SET", "set-max-intset-entries", "512"),
        ])


def test_restore_options_ttls_and_errors_match_redis(pair):
    pair.same("SET", "src", "value")
    payload = pair.same("DUMP", "src")
    body, version = payload[:-10], payload[-10:-8]
    bad_crc = body + version + bytes(8)
    new_version = body + struct.pack("<H", 11)
    new_version += struct.pack("<Q", crc64(new_version))
    garbage = b"\x00\x0fshort" + version
    garbage += struct.pack("<Q", crc64(garbage))
    unknown_type = b"\x07abc" + version
    unknown_type += struct.pack("<Q", crc64(unknown_type))
    for command in [
        ("DUMP", "nokey"),
        ("DUMP",), ("RESTORE", "k", "0"),
        ("RESTORE", "src", "0", payload),
        ("RESTORE", "k", "-1", payload),
        ("RESTORE", "k", "abc", payload),
        ("RESTORE", "k", "0", bad_crc),
        ("RESTORE", "k", "0", new_version),
        ("RESTORE", "k", "0", b"short"),
        ("RESTORE", "k", "0", garbage),
        ("RESTORE", "k", "0", unknown_type),
        ("RESTORE", "k", "0", payload, "BOGUS"),
        ("RESTORE", "k", "0", payload, "IDLETIME", "-1"),
        ("RESTORE", "k", "0", payload, "IDLETIME", "x"),
        ("RESTORE", "k", "0", payload, "FREQ", "256"),
        ("RESTORE", "k", "0", payload, "FREQ", "-1"),
        ("RESTORE", "k", "0", payload, "IDLETIME", "1", "FREQ", "1"),
        ("RESTORE", "k", "0", payload, "FREQ", "1", "IDLETIME", "1"),
        ("RESTORE", "k", "0", payload, "IDLETIME"),
        ("RESTORE", "src", "-1", payload, "BOGUS"),
        ("RESTORE", "src", "-1", payload),
        ("RESTORE", "k", "0", payload, "IDLETIME", "10", "REPLACE"),
        ("GET", "k"),
        ("RESTORE", "k2", "0", payload, "FREQ", "100"),
        ("RESTORE", "k3", str(FAR_MS), payload, "ABSTTL"),
        ("PEXPIRETIME", "k3"),
        ("RESTORE", "k3", "0", payload, "REPLACE"),
        ("PEXPIRETIME", "k3"),
        ("RESTORE", "k3", "1", payload, "REPLACE", "ABSTTL"),
        ("EXISTS", "k3"),
        ("RESTORE", "k4", "1", payload, "ABSTTL"),
        ("EXISTS", "k4"),
    ]:
        pair.same(*command)
    pair.same("RESTORE", "k5", "100000", payload)
    ttls = pair.both("PTTL", "k5")
    assert all(90000 < decode(t)[0] <= 100000 for t in ttls), ttls


def test_legacy_ziplist_and_text_score_payloads_restore_like_redis(pair):
    """Encodings a Redis 7.0 DUMP never writes but RESTORE accepts: ziplists
    (types 10, 12, 13), plain lists (1) and zsets with text scores (3)."""

    def ziplist(items: list[bytes | int]) -> bytes:
        entries = b""
        prev = 0
        for item in items:
            head = bytes((prev,)) if prev < 254 else b"\xfe" + struct.pack("<I", prev)
            if isinstance(item, int):
                body = b"\xc0" + struct.pack("<h", item) if abs(item) > 12 else bytes((0xF1 + item,))
            elif len(item) < 64:
                body = bytes((len(item),)) + item
            else:
                body = bytes((0x40 | (len(item) >> 8), len(item) & 0xFF)) + item
            entries += head + body
            prev = len(head) + len(body)
        total = 10 + len(entries) + 1
        return struct.pack("<IIH", total, total - 1 - prev, len(items)) + entries + b"\xff"

    def payload(body: bytes) -> bytes:
        body += struct.pack("<H", 9)
        return body + struct.pack("<Q", crc64(body))

    def blob(data: bytes) -> bytes:
        if len(data) < 64:
            return bytes((len(data),)) + data
        return bytes((0x40 | (len(data) >> 8), len(data) & 0xFF)) + data

    cases = {
        "l10": payload(b"\x0a" + blob(ziplist([b"a", 5, 300, b"x" * 70]))),
        "z12": payload(b"\x0c" + blob(ziplist([b"a", 1, b"b", b"2.5", b"c", 12]))),
        "h13": payload(b"\x0d" + blob(ziplist([b"f", b"v", b"n", 7]))),
        "l1": payload(b"\x01\x02\x01a\xc0\x05"),
        "z3": payload(b"\x03\x03\x01a\x031.5\x01b\xfe\x01c\x02-2"),
        "dup": payload(b"\x0d" + blob(ziplist([b"f", b"v", b"f", b"w"]))),
        "empty": payload(b"\x0a" + blob(ziplist([]))),
    }
    for key, data in cases.items():
        pair.same("RESTORE", key, 0, data)
        pair.same("TYPE", key)
        if pair.ours.value("EXISTS", key):
            assert contents(pair.ours, key) == contents(pair.theirs, key)
            pair.same("OBJECT", "ENCODING", key)


# --- the logged effect replays to the same state ------------------------------------------


def test_restore_effects_replay_to_the_live_state():
    live = new_ctx()
    call(live, "ZADD", "z", "1", "a", "2", "b")
    call(live, "RPUSH", "l", "x", "y")
    call(live, "SET", "gone", "1")
    zdump = call(live, "DUMP", "z")
    ldump = call(live, "DUMP", "l")
    call(live, "RESTORE", "z2", 0, zdump)
    call(live, "RESTORE", "l", 60000, zdump, "REPLACE")
    call(live, "RESTORE", "t", FAR_MS, ldump, "ABSTTL")
    call(live, "RESTORE", "gone", 1, ldump, "REPLACE", "ABSTTL")
    assert isinstance(call(live, "RESTORE", "z2", 0, zdump), ReplyError)
    effects = live.db.effects
    assert [e[0] for e in effects[-4:]] == [b"RESTORE", b"RESTORE", b"RESTORE", b"DEL"]
    assert effects[-3][2] == b"%d" % live.db.expires[b"l"]
    replayed = new_ctx()
    replay(replayed, effects)
    assert state_of(replayed.db) == state_of(live.db)
    assert b"gone" not in live.db.data
