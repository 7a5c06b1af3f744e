"""Big array replies encoded in pieces across a shard's loop turns (shards/chunked.py):
the same answer as redis-server, atomic (a write run between the pieces does not
show), and the shard serves other commands between the pieces (INFO's counters,
not a timing threshold). scripts/large_values.py measures KEYS over 1M keys and
LRANGE of 5M elements against redis-server."""

from __future__ import annotations

import socket
import threading

import hiredis
import redis
import trio
from refserver import redis_ref  # noqa: F401  (fixture)

from durakv.shards.chunked import CHUNK_ITEMS, CHUNKED_MIN_ITEMS, ChunkStats, as_chunked, send_chunked
from durakv.shards.frames import Pieces, encode_internal
from durakv.shards.resp import Map, Raw, SetReply, Simple, encode

KEYS = 2 * CHUNKED_MIN_ITEMS + 20_000  # two shards: each holds more than CHUNKED_MIN_ITEMS
LOAD_BATCH = 10_000


def load(client: redis.Redis, count: int, prefix: bytes = b"key:") -> None:
    pipe = client.pipeline(transaction=False)
    for first in range(0, count, LOAD_BATCH):
        pipe.mset({b"%s%09d" % (prefix, i): b"v" for i in range(first, min(count, first + LOAD_BATCH))})
    pipe.execute()


def info_stats(client: redis.Redis) -> dict:
    info = client.info("stats")
    return {name: info[name] for name in ("chunked_replies", "chunked_reply_turns", "commands_during_chunked_replies")}


def test_pieces_encoded_across_turns_are_the_reply_encoded_at_once():
    """Unit level: what send_chunked delivers after yielding between pieces is byte for
    byte what encode gives at once (RESP2, RESP3, and the internal (ok, Raw) of a
    fan-out), as one bytes or as Pieces for a router link."""
    mixed = [b"a", 1, None, [b"x", 2, None, [3]], Simple(b"OK"), 2.5, True, Map([b"k", 1]), SetReply([b"s"])]
    replies = [mixed * (CHUNKED_MIN_ITEMS // len(mixed) + 1), [b"k%d" % i for i in range(CHUNKED_MIN_ITEMS + 7)],
               SetReply([b"m%d" % i for i in range(CHUNKED_MIN_ITEMS)]),
               Map([b"f%d" % (i // 2) for i in range(CHUNKED_MIN_ITEMS + 2)])]
    assert as_chunked([b"few"] * (CHUNKED_MIN_ITEMS - 1), 2) is None

    async def main() -> None:
        for reply in replies:
            for proto in (0, 2, 3):
                if proto == 0 and type(reply) is not list:
                    continue  # only KEYS' array is chunked for an internal request
                expected = encode(reply, proto) if proto else encode_internal(True, Raw(encode(reply, 2)))
                for takes_pieces in (False, True):
                    got: list = []
                    stats = ChunkStats()
                    send_chunked(as_chunked(reply, proto), stats, takes_pieces, got.append)
                    assert stats.in_progress == 1 and not got  # nothing encoded yet: the loop runs first
                    while not got:
                        await trio.sleep(0)
                    data = got[0]
                    if takes_pieces:
                        assert type(data) is Pieces and len(data) == len(expected)
                        data = b"".join(data.parts)
                    assert data == expected
                    assert stats.turns > 1 and stats.in_progress == 0

    trio.run(main)


def test_keys_and_lrange_of_many_items_equal_redis(server_factory, redis_ref):  # noqa: F811
    srv = server_factory(shards=2)
    ours = srv.client()
    ref = redis_ref.client()
    ref.flushall()
    before = info_stats(ours)
    elements = [b"e%d" % i for i in range(CHUNKED_MIN_ITEMS + CHUNK_ITEMS // 2)]
    for client in (ours, ref):
        load(client, KEYS)
        for first in range(0, len(elements), LOAD_BATCH):
            client.rpush("list", *elements[first : first + LOAD_BATCH])
            client.sadd("set", *elements[first : first + LOAD_BATCH])
            client.hset("hash", mapping={e: b"v" + e for e in elements[first : first + LOAD_BATCH // 2]})
    for proto in (2, 3):
        ours_p = srv.client(protocol=proto)
        ref_p = redis_ref.client(protocol=proto)
        assert sorted(ours_p.keys("*")) == sorted(ref_p.keys("*"))
        assert sorted(ours_p.keys("key:00001*")) == sorted(ref_p.keys("key:00001*"))
        assert ours_p.lrange("list", 0, -1) == ref_p.lrange("list", 0, -1) == elements
        assert ours_p.lrange("list", 5, -7) == ref_p.lrange("list", 5, -7)
        assert ours_p.smembers("set") == ref_p.smembers("set")
        assert ours_p.hgetall("hash") == ref_p.hgetall("hash")
        if proto == 3:  # the RESP3 types: a set and a map
            assert ours_p.execute_command("SMEMBERS", "set").__class__ is set
        ours_p.close()
        ref_p.close()
    # inside MULTI and a script the list is encoded at once, as before
    tx = ours.pipeline(transaction=True)
    tx.lrange("list", 0, -1)
    assert tx.execute() == [elements]
    assert ours.eval("return #redis.call('lrange', KEYS[1], 0, -1)", 1, "list") == len(elements)
    after = info_stats(ours)
    # per proto: KEYS * on each shard, the two LRANGEs, SMEMBERS, HGETALL (KEYS key:00001* is too
    # small), and RESP3's second SMEMBERS
    assert after["chunked_replies"] - before["chunked_replies"] == 2 * (2 + 2 + 2) + 1
    assert after["chunked_reply_turns"] > after["chunked_replies"]
    ref.flushall()


def test_writes_after_a_big_reply_do_not_tear_it(server_factory):
    """KEYS and LRANGE followed, in the same pipeline (so in the same batch on the
    shard, run before any piece is encoded), by writes that change what they read:
    each reply is the keyspace as it was when the command ran."""
    srv = server_factory(shards=1)
    r = srv.client()
    load(r, CHUNKED_MIN_ITEMS + 5)
    r.rpush("list", *[b"e%d" % i for i in range(CHUNKED_MIN_ITEMS)])
    keys_before = set(r.keys("*"))
    before = info_stats(r)
    pipe = r.pipeline(transaction=False)
    pipe.keys("*").delete(b"key:000000000").set("new", "v").lrange("list", 0, -1)
    pipe.lpush("list", "first").rpop("list").lset("list", 5, "changed").keys("*")
    keys_then, deleted, _, elements, _, popped, _, keys_after = pipe.execute()
    assert set(keys_then) == keys_before and len(keys_then) == len(keys_before)
    assert deleted == 1
    assert elements == [b"e%d" % i for i in range(CHUNKED_MIN_ITEMS)]
    assert popped == b"e%d" % (CHUNKED_MIN_ITEMS - 1)
    assert set(keys_after) == keys_before - {b"key:000000000"} | {b"new"}
    assert info_stats(r)["chunked_replies"] - before["chunked_replies"] == 3


def test_shard_serves_other_clients_while_a_big_reply_is_encoded(server_factory):
    """While KEYS over many keys is encoded, another client's GETs of the same shard
    are answered: the shard counts the commands it ran between a reply's pieces."""
    srv = server_factory(shards=1)
    r = srv.client()
    load(r, KEYS)
    r.set("probe", "p")
    before = info_stats(r)
    answered_during = 0
    done = threading.Event()
    probing = threading.Event()

    def prober() -> None:
        nonlocal answered_during
        client = srv.client()
        while not done.is_set():
            assert client.get("probe") == b"p"
            answered_during += 1
            probing.set()
        client.close()

    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        thread = threading.Thread(target=prober)
        thread.start()
        try:
            # The KEYS goes once the prober is in its loop: on a loaded machine a thread
            # still connecting could miss the whole encoding (a CI run saw 0 during).
            assert probing.wait(30), "the prober never got its first GET answered"
            sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
            reader = hiredis.Reader()
            while (reply := reader.gets()) is False:
                reader.feed(sock.recv(1 << 20))
        finally:
            done.set()
            thread.join()
    assert len(reply) == KEYS + 1
    after = info_stats(r)
    assert after["chunked_replies"] == before["chunked_replies"] + 1
    assert after["commands_during_chunked_replies"] > before["commands_during_chunked_replies"], \
        f"no command ran while the reply was encoded ({answered_during} GETs answered in all)"
