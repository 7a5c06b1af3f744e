"""SMEMBERS, HGETALL, HKEYS and HVALS of a big set or hash (issue 11, session 9):
the shard reads the collection itself a chunk per loop turn (chunked.LiveItems)
where the handler copied all its items at once (2M members: tens of ms of the
loop, and as long again to free the copy). A write to the collection while the
reply reads it changes a copy (chunked.writable, shared with LRANGE's lists), so
the reply is the collection as the command saw it, in its iteration order.
Checked by counts and bytes, not times (scripts/big_replies.py measures the stalls).
"""

from __future__ import annotations

from types import SimpleNamespace

import redis

from durakv.shards import chunked
from durakv.shards.chunked import CHUNK_ITEMS, CHUNKED_MIN_ITEMS, LiveItems, as_chunked
from durakv.shards.context import Ctx
from durakv.shards.keyspace import Keyspace
from durakv.shards.resp import Map, SetReply, encode
from durakv.shards.t_hash import HashValue, hdel, hgetall, hincrby, hkeys, hset, hvals
from durakv.shards.t_set import SetValue, sadd, smembers, smove, spop, srem

SIZE = CHUNKED_MIN_ITEMS + 10_000
SETTINGS = {"set-max-intset-entries": 512, "hash-max-listpack-entries": 128, "hash-max-listpack-value": 64}


def _ctx(db: Keyspace, proto: int = 2) -> Ctx:
    ctx = Ctx(db, SimpleNamespace(settings=SETTINGS))  # type: ignore[arg-type]  # only settings are read
    ctx.proto = proto
    ctx.chunks = True
    return ctx


def _read_all(reply, proto: int) -> bytes:
    """The reply's bytes as the shard's encoder makes them, checking its chunk count."""
    big = as_chunked(reply, proto)
    assert big is not None
    assert len(list(big.items.chunks(CHUNK_ITEMS))) == -(-len(big.items) // CHUNK_ITEMS)
    return chunked.encode_all(big)


def test_smembers_of_a_big_set_reads_it_lazily_and_writes_copy_it():
    db = Keyspace()
    db.put(b"s", SetValue(b"m%d" % i for i in range(SIZE)))
    db.put(b"other", SetValue([b"x"]))
    db.set_expire(b"s", 2**62)
    original = db.data[b"s"]
    order = list(original)
    ctx = _ctx(db)
    reply = smembers(ctx, [b"SMEMBERS", b"s"])
    assert type(reply) is SetReply and type(reply.items) is LiveItems and reply.items.source is original
    again = smembers(ctx, [b"SMEMBERS", b"s"])  # two replies of one set open at once
    assert chunked.being_read[id(original)] == 2
    sadd(ctx, [b"SADD", b"s", b"new"])
    copied = db.data[b"s"]
    assert copied is not original and b"new" in copied and b"new" not in original
    assert b"s" in db.expires, "the copy keeps the TTL"
    srem(ctx, [b"SREM", b"s", b"m1"])
    assert db.data[b"s"] is copied, "copied once: the copy is nobody's reply"
    popped = spop(ctx, [b"SPOP", b"s"])
    assert popped in original and popped not in copied
    assert _read_all(reply, 2) == encode(order, 2)
    assert _read_all(again, 3) == encode(SetReply(order), 3)
    assert id(original) not in chunked.being_read, "closed once read"
    # SMOVE into and out of a set being read changes copies of both ends.
    moving = smembers(ctx, [b"SMEMBERS", b"s"])
    source = db.data[b"s"]
    smove(ctx, [b"SMOVE", b"s", b"other", b"m2"])
    smove(ctx, [b"SMOVE", b"other", b"s", b"x"])
    assert db.data[b"s"] is not source and b"m2" in source and b"x" not in source
    assert _read_all(moving, 2) == encode(list(source), 2)
    before = db.data[b"s"]
    sadd(ctx, [b"SADD", b"s", b"last"])
    assert db.data[b"s"] is before, "no copy once no reply reads it"
    ctx.chunks = False  # inside MULTI or a script: a list, at once, as before
    assert type(smembers(ctx, [b"SMEMBERS", b"s"]).items) is list


def test_hgetall_hkeys_hvals_of_a_big_hash_read_it_lazily_and_writes_copy_it():
    db = Keyspace()
    ctx = _ctx(db)
    for first in range(0, SIZE, 10_000):
        argv = [b"HSET", b"h"]
        for i in range(first, min(first + 10_000, SIZE)):
            argv += [b"f%d" % i, b"%d" % i]
        hset(ctx, argv)
    original = db.data[b"h"]
    fields, values = list(original), list(original.values())
    pairs = [x for pair in original.items() for x in pair]
    everything = hgetall(ctx, [b"HGETALL", b"h"])
    keys = hkeys(ctx, [b"HKEYS", b"h"])
    vals = hvals(ctx, [b"HVALS", b"h"])
    assert type(everything) is Map and type(everything.items) is LiveItems
    assert type(keys) is LiveItems and type(vals) is LiveItems and keys.source is original
    hincrby(ctx, [b"HINCRBY", b"h", b"f0", b"5"])  # changes a value in place: no size change
    copied = db.data[b"h"]
    assert copied is not original and copied[b"f0"] == b"5" and original[b"f0"] == b"0"
    hdel(ctx, [b"HDEL", b"h", b"f1"])
    hset(ctx, [b"HSET", b"h", b"new", b"v"])
    assert db.data[b"h"] is copied and type(copied) is HashValue
    assert _read_all(everything, 2) == encode(pairs, 2)
    assert _read_all(Map(hgetall(ctx, [b"HGETALL", b"h"]).items), 3) \
        == encode(Map([x for pair in copied.items() for x in pair]), 3)
    assert _read_all(keys, 3) == encode(fields, 3)
    assert _read_all(vals, 2) == encode(values, 2)
    assert not chunked.being_read
    hset(ctx, [b"HSET", b"h", b"f0", b"again"])
    assert db.data[b"h"] is copied, "no copy once no reply reads it"


def test_a_collection_changed_behind_the_copy_is_an_error_not_a_torn_reply():
    db = Keyspace()
    db.put(b"s", SetValue(b"m%d" % i for i in range(SIZE)))
    reply = smembers(_ctx(db), [b"SMEMBERS", b"s"])
    pieces = reply.items.chunks(CHUNK_ITEMS)
    next(pieces)
    db.data[b"s"].add(b"behind the copy's back")
    try:
        next(pieces)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a set changed mid-read must end the read")
    reply.items.close()
    assert not chunked.being_read


def test_big_smembers_and_hgetall_are_the_collection_as_it_was(server_factory):
    """Pipelined with writes to the very collection (same batch on the shard: they
    run before the reply's first chunk is read), each big reply is the collection
    as it was, in the order it iterates, via the router and the shard port (keys
    in one slot, for SMOVE there)."""
    srv = server_factory(shards=1)
    members = [b"member-with-some-padding-%09d" % i for i in range(SIZE)]
    for client in (redis.Redis(port=srv.port), redis.Redis(port=srv.shard_port(0))):
        client.set_response_callback("SMEMBERS", lambda reply, **_: reply)  # a list, in the server's order
        client.delete("{c}s", "{c}h", "{c}dst")
        pipe = client.pipeline(transaction=False)
        for first in range(0, SIZE, 10_000):
            pipe.sadd("{c}s", *members[first : first + 10_000])
            pipe.hset("{c}h", mapping={m: b"v" + m for m in members[first : first + 10_000]})
        pipe.execute()
        order = client.execute_command("SMEMBERS", "{c}s")  # a list: the set's iteration order
        fields = client.hkeys("{c}h")
        before = client.info("stats")["chunked_replies"]
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("SMEMBERS", "{c}s").sadd("{c}s", "new").srem("{c}s", members[0]).spop("{c}s")
        pipe.smove("{c}s", "{c}dst", members[1]).execute_command("SMEMBERS", "{c}s")
        pipe.hgetall("{c}h").hset("{c}h", members[0], "changed").hdel("{c}h", members[1]).hkeys("{c}h").hvals("{c}h")
        full, added, removed, popped, moved, after, everything, _, deleted, keys, vals = pipe.execute()
        assert type(full) is list and full == order
        assert (added, removed, moved, deleted) == (1, 1, True, 1)
        assert set(after) == set(members[2:]) - {popped} | {b"new"} and len(after) == SIZE - 2
        assert list(everything) == fields and all(everything[f] == b"v" + f for f in fields)
        assert set(keys) == set(members) - {members[1]} and len(keys) == SIZE - 1
        assert vals[keys.index(members[0])] == b"changed"
        assert client.info("stats")["chunked_replies"] - before == 5
