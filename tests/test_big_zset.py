"""ZRANGE and friends over a big sorted set (issue 11, session 10): the shard reads
the range from the set's order a chunk per loop turn (chunked.SortedRange), where
the handler built a list of a million (score, member) pairs and a second one of
the reply's items at once (chunked.SortedRange: each chunk's items are bytes, or
one pre-encoded Raw for RESP3 pairs, so it is encoded in C). A write to the set while a reply reads it changes a
copy (chunked.writable), so the reply is the set as the command saw it. Replies
are compared with redis-server's bytes; the same-shard latency during a ZRANGE of
a big set is printed, not asserted (scripts/big_replies.py --zset-members measures it).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import hiredis
import redis
from refserver import RECV_BYTES, RawConn, encode_command

from durakv.shards import chunked
from durakv.shards.chunked import CHUNK_ITEMS, CHUNKED_MIN_ITEMS, SortedRange, as_chunked
from durakv.shards.context import Ctx
from durakv.shards.keyspace import Keyspace
from durakv.shards.resp import encode
from durakv.shards.t_zset import (
    ZSetValue, format_pairs, zadd, zincrby, zpopmin, zrange, zrangebylex, zrem, zremrangebyrank, zrevrangebyscore,
)

SIZE = CHUNKED_MIN_ITEMS + 10_000
SETTINGS = {"zset-max-listpack-entries": 128, "zset-max-listpack-value": 64}
LOAD_BATCH = 10_000
END_MARK = "end-of-the-pipeline-7f3a"
END_REPLY = b"$%d\r\n%b\r\n" % (len(END_MARK), END_MARK.encode())


def _ctx(db: Keyspace, proto: int = 2) -> Ctx:
    ctx = Ctx(db, SimpleNamespace(settings=SETTINGS))  # type: ignore[arg-type]  # only settings are read
    ctx.proto = proto
    ctx.chunks = True
    return ctx


def _member(i: int) -> bytes:
    return b"m%07d" % ((i * 7919) % SIZE)  # members out of score order: the order is (score, member)


def _big_zset() -> ZSetValue:
    # Scores repeat (i // 3): ties are ordered by member, as Redis does.
    return ZSetValue.from_scores({_member(i): float(i // 3) + 0.5 for i in range(SIZE)}, listpack=False)


def _read_all(reply, proto: int) -> bytes:
    """The reply's bytes as the shard's encoder makes them, checking that it comes in
    chunks of at most CHUNK_ITEMS pairs."""
    big = as_chunked(reply, proto)
    assert big is not None
    chunks = len(list(big.items.chunks(CHUNK_ITEMS)))
    assert chunks >= -(-(reply.end - reply.start) // CHUNK_ITEMS)
    return chunked.encode_all(big)


def test_zrange_of_a_big_zset_reads_it_lazily_and_writes_copy_it():
    db = Keyspace()
    db.put(b"z", _big_zset())
    db.set_expire(b"z", 2**62)
    original = db.data[b"z"]
    pairs = list(original.order)
    ctx2, ctx3 = _ctx(db), _ctx(db, 3)
    plain = zrange(ctx2, [b"ZRANGE", b"z", b"0", b"-1"])
    scored = zrange(ctx2, [b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"])
    scored3 = zrange(ctx3, [b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"])
    rev = zrevrangebyscore(ctx2, [b"ZREVRANGEBYSCORE", b"z", b"+inf", b"(10", b"WITHSCORES", b"LIMIT", b"3",
                                  b"55000"])
    for reply in (plain, scored, scored3, rev):
        assert type(reply) is SortedRange and reply.source is original
    assert chunked.being_read[id(original)] == 4
    assert len(plain) == SIZE and len(scored) == 2 * SIZE and len(scored3) == SIZE and len(rev) == 2 * 55_000
    zadd(ctx2, [b"ZADD", b"z", b"1", b"new"])
    copied = db.data[b"z"]
    assert copied is not original and b"new" in copied.scores and b"new" not in original.scores
    assert b"z" in db.expires, "the copy keeps the TTL"
    zrem(ctx2, [b"ZREM", b"z", _member(5)])
    zincrby(ctx2, [b"ZINCRBY", b"z", b"1000000", _member(6)])
    assert db.data[b"z"] is copied, "copied once: the copy is nobody's reply"
    assert list(original.order) == pairs, "the set being read did not change"
    assert _read_all(plain, 2) == encode(format_pairs(ctx2, pairs, False), 2)
    assert _read_all(scored, 2) == encode(format_pairs(ctx2, pairs, True), 2)
    assert _read_all(scored3, 3) == encode(format_pairs(ctx3, pairs, True), 3)
    high = [p for p in reversed(pairs) if p[0] > 10][3 : 3 + 55_000]
    assert _read_all(rev, 2) == encode(format_pairs(ctx2, high, True), 2)
    assert id(original) not in chunked.being_read, "closed once read"
    # Pops and range removals change a copy too.
    for write in ([b"ZPOPMIN", b"z", b"3"], [b"ZREMRANGEBYRANK", b"z", b"0", b"9"]):
        source = db.data[b"z"]
        before = list(source.order)
        reading = zrange(ctx2, [b"ZRANGE", b"z", b"0", b"-1"])
        (zpopmin if write[0] == b"ZPOPMIN" else zremrangebyrank)(ctx2, write)
        assert db.data[b"z"] is not source and list(source.order) == before
        assert _read_all(reading, 2) == encode([m for _, m in before], 2)
    last = db.data[b"z"]
    zadd(ctx2, [b"ZADD", b"z", b"2", b"last"])
    assert db.data[b"z"] is last, "no copy once no reply reads it"
    ctx2.chunks = False  # inside MULTI or a script: a list, at once, as before
    assert type(zrange(ctx2, [b"ZRANGE", b"z", b"0", b"-1"])) is list
    ctx2.chunks = True
    assert type(zrange(ctx2, [b"ZRANGE", b"z", b"0", b"10"])) is list, "a small range is a list"


def test_zrangebylex_of_a_big_zset_is_read_lazily():
    db = Keyspace()
    db.put(b"lex", ZSetValue.from_scores({_member(i): 0.0 for i in range(SIZE)}, listpack=False))
    ctx = _ctx(db)
    reply = zrangebylex(ctx, [b"ZRANGEBYLEX", b"lex", b"[m0000100", b"+", b"LIMIT", b"1", b"-1"])
    assert type(reply) is SortedRange
    expected = sorted(_member(i) for i in range(SIZE) if _member(i) >= b"m0000100")[1:]
    assert _read_all(reply, 2) == encode(expected, 2)


def _load(client: redis.Redis, key: str, members: dict[bytes, float]) -> None:
    pipe = client.pipeline(transaction=False)
    items = list(members.items())
    for first in range(0, len(items), LOAD_BATCH):
        pipe.zadd(key, dict(items[first : first + LOAD_BATCH]))
    pipe.execute()


def test_big_zrange_replies_match_redis_with_writes_pipelined(server, redis_ref):
    """Each form of a big range, pipelined with writes to the very set (they run in
    the same batch, before the reply's first chunk is read), gives redis-server's
    bytes, RESP2 and RESP3; a ZRANGE WITHSCORES leaves in pieces (INFO chunked_replies)."""
    members = {_member(i): float(i // 3) + 0.5 for i in range(SIZE)}
    lex = {_member(i): 0.0 for i in range(SIZE)}
    for port in (server.port, redis_ref.port):
        client = redis.Redis(port=port)
        client.flushall()
        _load(client, "{z}big", members)
        _load(client, "{z}lex", lex)
    ranges = [
        ("ZRANGE", "{z}big", "0", "-1", "WITHSCORES"),
        ("ZADD", "{z}big", "7", "added"),
        ("ZRANGE", "{z}big", "-60000", "-2"),
        ("ZREM", "{z}big", _member(1)),
        ("ZREVRANGE", "{z}big", "0", "-1", "WITHSCORES"),
        ("ZPOPMAX", "{z}big", "2"),
        ("ZRANGE", "{z}big", "(100", "+inf", "BYSCORE", "LIMIT", "5", "59000"),
        ("ZRANGE", "{z}big", "+inf", "-inf", "BYSCORE", "REV", "WITHSCORES"),
        ("ZINCRBY", "{z}big", "3.25", _member(10)),
        ("ZRANGEBYLEX", "{z}lex", "(m0001000", "+"),
        ("ZREVRANGEBYLEX", "{z}lex", "+", "-", "LIMIT", "2", "60000"),
        ("ZRANGESTORE", "{z}dst", "{z}big", "0", "-1"),
        ("ZRANGE", "{z}dst", "0", "-1", "WITHSCORES"),
    ]
    before = redis.Redis(port=server.port).info("stats")["chunked_replies"]
    for proto in (2, 3):
        ours, theirs = (_stream(port, proto, ranges) for port in (server.port, redis_ref.port))
        if ours != theirs:
            at = next(i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y)
            raise AssertionError(f"RESP{proto}: the replies differ at byte {at} of {len(ours)}/{len(theirs)}: "
                                 f"durakv {ours[at - 100 : at + 100]!r} != redis {theirs[at - 100 : at + 100]!r}")
    assert redis.Redis(port=server.port).info("stats")["chunked_replies"] - before == 2 * 8


def _stream(port: int, proto: int, commands: list[tuple]) -> bytes:
    """The bytes of the replies to `commands`, pipelined on one connection (an ECHO
    after them marks the end: read as a stream, not parsed)."""
    conn = RawConn(port, proto)
    end = encode_command(("ECHO", END_MARK))
    try:
        conn.send_raw(b"".join(encode_command(c) for c in commands) + end)
        chunks, tail = [conn.buf], b""
        while not tail.endswith(END_REPLY):
            data = conn.sock.recv(RECV_BYTES)
            assert data, "the connection closed"
            chunks.append(data)
            tail = (tail + data)[-len(END_REPLY):]
        return b"".join(chunks)
    finally:
        conn.close()


def test_same_shard_latency_during_a_big_zrange_is_printed(server):
    """A client of the shard doing a ZRANGE of a big set: its GETs during the reply
    (measured and printed: the loop turns of one chunk each, not the whole range)."""
    size = 2 * CHUNKED_MIN_ITEMS
    client = redis.Redis(port=server.port)
    client.flushall()
    _load(client, "{z}big", {b"member-%09d" % i: float(i) for i in range(size)})
    client.set("{z}probe", "v")
    probe = RawConn(server.port)
    reader = RawConn(server.port)
    parser = hiredis.Reader()
    latencies_ms = []
    reader.send_raw(encode_command(("ZRANGE", "{z}big", "0", "-1", "WITHSCORES")))
    started = time.monotonic()
    first_byte_s = 0.0
    reader.sock.setblocking(False)
    try:
        while (reply := parser.gets()) is False:
            t0 = time.monotonic()
            assert probe.call("GET", "{z}probe") == b"$1\r\nv\r\n"
            latencies_ms.append((time.monotonic() - t0) * 1000)
            try:
                while True:
                    data = reader.sock.recv(RECV_BYTES)
                    assert data, "the connection closed in the reply"
                    first_byte_s = first_byte_s or time.monotonic() - started
                    parser.feed(data)
            except BlockingIOError:
                pass
    finally:
        probe.close()
        reader.close()
    assert len(reply) == 2 * size and reply[-2:] == [b"member-%09d" % (size - 1), b"%d" % (size - 1)]
    print(f"\nZRANGE 0 -1 WITHSCORES of {size} members: first byte after {first_byte_s * 1000:.0f} ms, "
          f"whole reply after {(time.monotonic() - started) * 1000:.0f} ms; "
          f"{len(latencies_ms)} same-slot GETs meanwhile, max {max(latencies_ms):.1f} ms, "
          f"median {sorted(latencies_ms)[len(latencies_ms) // 2]:.1f} ms")
