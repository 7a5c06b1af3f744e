"""Keyspace notifications of the commands beyond the basic writes (pops, moves,
*STORE, bit, HyperLogLog, geo, SORT STORE, RESTORE...), compared message for
message with redis-server under notify-keyspace-events KEA."""

from __future__ import annotations

import time

from refserver import Pair, RawConn, decode

END = [b"pmessage", b"__key*__:*", b"__keyspace@0__:{t}end", b"set"]

COMMANDS = [
    # sets
    ("SADD", "{t}s1", "a", "b", "c"), ("SADD", "{t}s2", "c", "d"),
    ("SMOVE", "{t}s1", "{t}s2", "a"), ("SMOVE", "{t}s1", "{t}s3", "b"), ("SMOVE", "{t}s1", "{t}s3", "zz"),
    ("SMOVE", "{t}s2", "{t}s2", "c"),
    ("SADD", "{t}s4", "x"), ("SMOVE", "{t}s4", "{t}s5", "x"),
    ("SINTERSTORE", "{t}si", "{t}s2", "{t}s3"), ("SUNIONSTORE", "{t}su", "{t}s2", "{t}s3"),
    ("SDIFFSTORE", "{t}sd", "{t}s2", "{t}s3"), ("SINTERSTORE", "{t}su", "{t}nosuch", "{t}s2"),
    ("SINTERSTORE", "{t}none", "{t}nosuch", "{t}s2"),
    ("SADD", "{t}p", "only"), ("SPOP", "{t}p"), ("SADD", "{t}p", "a", "b", "c"), ("SPOP", "{t}p", "0"),
    ("SPOP", "{t}p", "1"), ("SPOP", "{t}p", "5"), ("SPOP", "{t}nosuch"),
    ("SADD", "{t}p", "a"), ("SREM", "{t}p", "a"),
    # sorted sets
    ("ZADD", "{t}z1", "1", "a", "2", "b", "3", "c", "4", "d"), ("ZADD", "{t}z2", "1", "c", "2", "x"),
    ("ZADD", "{t}z1", "1", "a"), ("ZADD", "{t}z1", "XX", "CH", "5", "a"), ("ZADD", "{t}z1", "NX", "1", "a"),
    ("ZINCRBY", "{t}z1", "1", "q"),
    ("ZPOPMIN", "{t}z1"), ("ZPOPMAX", "{t}z1", "2"), ("ZPOPMIN", "{t}nosuch"), ("ZPOPMIN", "{t}z1", "0"),
    ("ZMPOP", "2", "{t}nosuch", "{t}z1", "MIN", "COUNT", "10"),
    ("BZPOPMIN", "{t}z2", "0"), ("BZPOPMAX", "{t}z2", "0"), ("ZADD", "{t}z2", "7", "y"),
    ("BZMPOP", "0", "1", "{t}z2", "MAX"),
    ("ZADD", "{t}z1", "1", "a", "2", "b", "3", "c", "4", "d", "5", "e"), ("ZADD", "{t}z2", "1", "a", "9", "z"),
    ("ZUNIONSTORE", "{t}zu", "2", "{t}z1", "{t}z2"), ("ZINTERSTORE", "{t}zi", "2", "{t}z1", "{t}z2"),
    ("ZDIFFSTORE", "{t}zd", "2", "{t}z1", "{t}z2"), ("ZINTERSTORE", "{t}zu", "2", "{t}z1", "{t}nosuch"),
    ("ZINTERSTORE", "{t}none", "2", "{t}z1", "{t}nosuch"),
    ("ZRANGESTORE", "{t}zr", "{t}z1", "0", "1"), ("ZRANGESTORE", "{t}zr", "{t}z1", "10", "20"),
    ("ZREMRANGEBYSCORE", "{t}z1", "1", "1"), ("ZREMRANGEBYRANK", "{t}z1", "0", "0"),
    ("ZREMRANGEBYLEX", "{t}z2", "-", "+"), ("ZREMRANGEBYSCORE", "{t}z1", "100", "200"),
    ("ZREMRANGEBYRANK", "{t}z1", "0", "-1"),
    # hashes
    ("HSET", "{t}h", "f", "1", "g", "2"), ("HSETNX", "{t}h", "f", "1"), ("HSETNX", "{t}h", "n", "1"),
    ("HINCRBY", "{t}h", "f", "1"), ("HINCRBYFLOAT", "{t}h", "f", "1.5"), ("HDEL", "{t}h", "f", "g", "n"),
    ("HMSET", "{t}h", "a", "1"),
    # strings, bits, HyperLogLog
    ("SETRANGE", "{t}str", "2", "ab"), ("APPEND", "{t}str", "x"), ("INCRBYFLOAT", "{t}n", "1.5"),
    ("GETDEL", "{t}n"), ("SET", "{t}n", "1"), ("GETEX", "{t}n", "EX", "100"), ("GETEX", "{t}n", "PERSIST"),
    ("GETSET", "{t}n", "2"), ("MSETNX", "{t}m1", "1", "{t}m2", "2"), ("PSETEX", "{t}ps", "100000", "v"),
    ("SETBIT", "{t}b", "7", "1"), ("BITOP", "OR", "{t}bo", "{t}b", "{t}str"), ("BITOP", "AND", "{t}bo", "{t}nosuch"),
    ("BITFIELD", "{t}bf", "SET", "u8", "0", "255", "GET", "u8", "0"), ("BITFIELD", "{t}bf", "GET", "u8", "0"),
    ("BITFIELD", "{t}bf", "INCRBY", "u8", "0", "1", "OVERFLOW", "FAIL", "INCRBY", "u8", "0", "300"),
    ("PFADD", "{t}hll", "a", "b"), ("PFADD", "{t}hll", "a"), ("PFADD", "{t}hll2"), ("PFCOUNT", "{t}hll"),
    ("PFMERGE", "{t}hll3", "{t}hll", "{t}hll2"),
    # lists
    ("RPUSH", "{t}l", "3", "1", "2"), ("LPUSHX", "{t}l", "0"), ("RPUSHX", "{t}nosuch", "0"),
    ("LMPOP", "1", "{t}l", "LEFT", "COUNT", "2"), ("BLMPOP", "0", "1", "{t}l", "RIGHT"),
    ("RPUSH", "{t}l", "c", "a", "b"), ("SORT", "{t}l", "ALPHA", "STORE", "{t}sorted"),
    ("SORT", "{t}nosuch", "STORE", "{t}sorted"), ("SORT", "{t}nosuch", "STORE", "{t}sorted"),
    ("LMOVE", "{t}l", "{t}l2", "LEFT", "RIGHT"), ("BLMOVE", "{t}l", "{t}l", "LEFT", "RIGHT", "0"),
    # geo
    ("GEOADD", "{t}g", "13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania"),
    ("GEOSEARCHSTORE", "{t}gs", "{t}g", "FROMMEMBER", "Palermo", "BYRADIUS", "500", "km", "ASC"),
    ("GEOSEARCHSTORE", "{t}gd", "{t}g", "FROMMEMBER", "Palermo", "BYRADIUS", "500", "km", "STOREDIST"),
    ("GEORADIUS", "{t}g", "15", "37", "200", "km", "STORE", "{t}gr"),
    ("GEOSEARCHSTORE", "{t}gs", "{t}g", "FROMLONLAT", "0", "0", "BYRADIUS", "1", "km"),
    # keys
    ("COPY", "{t}g", "{t}gcopy"), ("COPY", "{t}g", "{t}gcopy", "REPLACE"), ("RENAMENX", "{t}gcopy", "{t}g2"),
    ("EXPIRE", "{t}g2", "100"), ("PEXPIREAT", "{t}g2", "99999999999999"), ("EXPIRE", "{t}g2", "-1"),
    ("SET", "{t}k", "v"), ("EXPIRE", "{t}k", "100", "NX"), ("EXPIRE", "{t}k", "100", "NX"), ("TOUCH", "{t}k"),
    ("UNLINK", "{t}k"), ("SET", "{t}k", "v", "KEEPTTL", "GET"), ("SET", "{t}k", "v2", "XX", "EX", "10"),
    ("SETEX", "{t}k", "100", "v3"), ("SETNX", "{t}k", "v4"), ("DECRBY", "{t}dec", "3"),
]


def test_more_keyspace_events_match_redis(server, redis_ref):
    p = Pair(server.port, redis_ref.port, 2)
    subs = (RawConn(server.port), RawConn(redis_ref.port))
    try:
        p.same("FLUSHALL")
        p.same("CONFIG", "SET", "notify-keyspace-events", "KEA")
        for conn in subs:
            assert decode(conn.call("PSUBSCRIBE", "__key*__:*"))[0][0] == b"psubscribe"
        for args in COMMANDS:
            p.both(*args)  # replies are compared by the type tests; here the events matter
        # DUMP/RESTORE of a value both sides can read (the payloads differ in layout).
        payload = decode(p.theirs.call("DUMP", "{t}s2"))[0]
        for conn in (p.ours, p.theirs):
            conn.call("RESTORE", "{t}restored", "0", payload)
            conn.call("RESTORE", "{t}restored", "0", payload, "REPLACE")
        p.same("SET", "{t}end", "v")
        ours: list = []
        theirs: list = []
        for conn, got in ((subs[0], ours), (subs[1], theirs)):
            while not got or got[-1] != END:
                got.append(decode(conn.read_reply())[0])
        for n, (a, b) in enumerate(zip(ours, theirs)):
            assert a == b, f"message {n}: durakv {a!r} != redis {b!r}; before: {theirs[max(0, n - 3):n]!r}"
        assert len(ours) == len(theirs)
        print(f"{len(ours)} keyspace messages, identical to redis-server's")
    finally:
        for conn in (p.ours, p.theirs):
            conn.call("CONFIG", "SET", "notify-keyspace-events", "")
        p.close()
        for conn in subs:
            conn.close()
        time.sleep(0)


def test_keymiss_events_match_redis(server, redis_ref):
    """The `m` class (not in `A`): a read command that finds no key publishes keymiss."""
    p = Pair(server.port, redis_ref.port, 2)
    subs = (RawConn(server.port), RawConn(redis_ref.port))
    try:
        p.same("FLUSHALL")
        p.same("CONFIG", "SET", "notify-keyspace-events", "KEm")
        for conn in subs:
            assert decode(conn.call("PSUBSCRIBE", "__key*__:*"))[0][0] == b"psubscribe"
        for args in [("GET", "{t}nokey"), ("SET", "{t}k", "v"), ("GET", "{t}k"), ("HGET", "{t}noh", "f"),
                     ("LRANGE", "{t}nol", "0", "-1"), ("SET", "{t}gone", "v", "PX", "1")]:
            p.same(*args)
        time.sleep(0.01)
        p.same("GET", "{t}gone")
        p.same("CONFIG", "SET", "notify-keyspace-events", "KA")
        p.same("SET", "{t}end", "v")
        ours: list = []
        theirs: list = []
        for conn, got in ((subs[0], ours), (subs[1], theirs)):
            while not got or got[-1] != END:
                got.append(decode(conn.read_reply())[0])
        assert ours == theirs
        assert sum(1 for m in ours if m[-1] == b"keymiss") == 4
    finally:
        for conn in (p.ours, p.theirs):
            conn.call("CONFIG", "SET", "notify-keyspace-events", "")
        p.close()
        for conn in subs:
            conn.close()
