"""Whole-keyspace commands (FLUSHDB, FLUSHALL, DBSIZE, KEYS, RANDOMKEY, SCAN) inside
a MULTI whose keys live on several shards, through the router: Redis' single-node
semantics, with every shard locked whole for the transaction (server/txn.py,
shards/txn.py "all"/"wide" locks)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from test_txn import A, A2, B, B2, spread


def test_keyspace_commands_in_a_cross_shard_multi_match_redis(pair):
    pair.same("MSET", A, "1", B, "2", A2, "3")
    pair.same("MULTI")
    for command in [("SET", B2, "4"), ("DBSIZE",), ("KEYS", "*"), ("DEL", A), ("DBSIZE",), ("FLUSHDB",),
                    ("DBSIZE",), ("SET", A, "x"), ("KEYS", "*"), ("RANDOMKEY",), ("SCAN", "0", "COUNT", "100"),
                    ("INCR", B)]:
        pair.same(*command)
    ours, theirs = pair.both("EXEC")
    assert len(ours) == len(theirs)
    pair.same("DBSIZE")
    pair.same("MGET", A, B, A2, B2)
    # Only a flush (nothing read before it): the shards lock whole but move no values.
    pair.same("MULTI")
    pair.same("FLUSHALL")
    pair.same("EXEC")
    pair.same("DBSIZE")
    pair.same("MULTI")
    pair.same("SET", A, "a")
    pair.same("SET", B, "b")
    pair.same("FLUSHDB")
    pair.same("SET", B2, "c")
    pair.same("DBSIZE")
    pair.same("EXEC")
    pair.same("KEYS", "*")


def test_flushdb_in_multi_through_the_router(server):
    """The Redis suite's tracking test: MULTI FLUSHDB EXEC answers [OK], the client
    leaves MULTI, and every shard is empty."""
    r = server.client()
    r.mset({A: "1", B: "2"})
    p = r.pipeline(transaction=True)
    p.flushdb()
    assert p.execute() == [True]
    assert r.dbsize() == 0
    assert r.ping() is True
    info = r.info("persistence")
    assert info["xshard_locked_keys"] == 0 and info["xshard_waiting_requests"] == 0


def test_dbsize_in_a_cross_shard_multi_is_isolated(server):
    """A MULTI's DBSIZE never sees half of a concurrent cross-shard MSET of two new keys."""
    r = server.client()
    r.flushall()
    keys = spread(40)
    stop = threading.Event()
    sizes: list[int] = []

    def reader() -> None:
        c = server.client()
        while not stop.is_set():
            p = c.pipeline(transaction=True)
            p.dbsize()
            p.get(A)
            p.get(B)
            sizes.append(p.execute()[0])

    t = threading.Thread(target=reader)
    t.start()
    w = server.client()
    for n in range(0, len(keys), 2):
        w.mset({keys[n]: "v", keys[n + 1]: "v"})
    stop.set()
    t.join()
    print(f"{len(sizes)} DBSIZEs")
    assert sizes and all(size % 2 == 0 for size in sizes), sizes



def test_sort_by_and_get_patterns_across_shards_match_redis(pair):
    """The keys BY/GET patterns name live on every shard: the transaction finds
    them as it runs, locks them and runs again."""
    pair.same("RPUSH", "ids", "3", "1", "2", "10")
    for n, (weight, name) in enumerate([("30", "c"), ("10", "a"), ("20", "b"), ("5", "z")]):
        element = ["3", "1", "2", "10"][n]
        pair.same("SET", f"weight_{element}", weight)
        pair.same("HSET", f"obj_{element}", "name", name)
        pair.same("SET", f"label_{element}", f"L{element}")
    for command in [("SORT", "ids", "BY", "weight_*"), ("SORT", "ids", "BY", "weight_*", "GET", "#", "GET", "label_*"),
                    ("SORT", "ids", "BY", "obj_*->name", "ALPHA", "GET", "obj_*->name", "DESC"),
                    ("SORT_RO", "ids", "BY", "nosort", "GET", "label_*"),
                    ("SORT", "ids", "BY", "weight_*", "GET", "label_*", "STORE", "sorted"),
                    ("LRANGE", "sorted", "0", "-1"), ("SORT", "ids", "BY", "missing_*", "GET", "missing_*")]:
        pair.same(*command)
    pair.same("MULTI")
    pair.same("SET", "weight_1", "100")
    pair.same("SORT", "ids", "BY", "weight_*", "GET", "label_*")
    pair.same("EXEC")


def test_a_script_reads_undeclared_keys_on_other_shards(pair):
    """A script whose declared keys span shards reads (and writes) keys it did not
    declare, on any shard: they are found, locked and the script runs again."""
    pair.same("MSET", A, "1", B, "2", A2, "3", B2, "4")
    script = ("local s = redis.call('GET', KEYS[1]) .. redis.call('GET', KEYS[2]) .. "
              "(redis.call('GET', ARGV[1]) or '-') .. (redis.call('GET', ARGV[2]) or '-') "
              "redis.call('SET', ARGV[3], s) return s")
    pair.same("EVAL", script, "2", A, B, A2, B2, "undeclared-out")
    pair.same("MGET", "undeclared-out", A, B)


def test_cross_shard_writes_are_refused_over_maxmemory_as_redis(pair, redis_ref, server):
    """maxmemory 1 (noeviction): a cross-shard MSET answers OOM and a cross-shard MULTI
    holding a denyoom command EXECABORT ... OOM, as on one Redis; reads and DEL run."""
    from refserver import Pair
    from test_maxmemory import set_both

    pair.same("MSET", A, "1", B, "2")
    admin = Pair(server.port, redis_ref.port)
    pair.same("MULTI")
    pair.same("SET", A, "3")
    pair.same("GET", B)
    try:
        set_both(admin, "maxmemory", "1")
        pair.same("EXEC")
        pair.same("MSET", A, "5", B, "6")
        pair.same("RENAME", A, A2)
        pair.same("MGET", A, B)
        pair.same("DEL", A, B)
    finally:
        set_both(admin, "maxmemory", "0")
        admin.close()


def test_an_acl_users_cross_shard_script_obeys_its_rules(server):
    """The user's rules travel with a script whose keys span shards (alone or in MULTI):
    a refused redis.call fails in the executor as on one shard, nothing is applied."""
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "xscripter", "on", ">pw", "+eval", "+get", "+multi", "+exec",
                          f"~{A}", f"~{B}")
    admin.mset({A: "a", B: "b"})
    user = server.client(username="xscripter", password="pw")
    both = "return redis.call('get', KEYS[1]) .. redis.call('get', KEYS[2])"
    assert user.eval(both, 2, A, B) == b"ab"
    try:
        with pytest.raises(redis.ResponseError, match="can't run this command or subcommand"):
            user.eval("redis.call('set', KEYS[2], 'x') return 1", 2, A, B)
        with pytest.raises(redis.ResponseError, match="can't run this command or subcommand"):
            pipe = user.pipeline(transaction=True)
            pipe.eval("redis.call('set', KEYS[1], 'x') return 1", 2, A, B)
            pipe.execute()
        assert admin.mget(A, B) == [b"a", b"b"]
    finally:
        admin.execute_command("ACL", "DELUSER", "xscripter")


def test_blmpop_and_bzmpop_across_shards_match_redis(pair):
    pair.same("RPUSH", B, "x", "y")
    pair.same("BLMPOP", "0.1", "2", A, B, "LEFT", "COUNT", "5")
    pair.same("BLMPOP", "0.1", "2", A, B, "RIGHT")  # both empty: times out
    pair.same("ZADD", A2, "1", "a", "2", "b")
    pair.same("BZMPOP", "0.1", "2", B2, A2, "MAX")
    pair.same("BZMPOP", "0", "2", B2, A2, "MIN", "COUNT", "3")
    pair.same("BLMPOP", "-1", "2", A, B, "LEFT")
    pair.same("BZMPOP", "0.1", "0", A, B, "MIN")
    pair.same("SET", A, "string")
    pair.same("BLMPOP", "0.1", "2", A, B, "LEFT")


def test_blmpop_across_shards_waits_for_either_shard(server):
    """A BLMPOP over keys on two shards blocks on both; a push to either serves it,
    exactly once; CLIENT UNBLOCK ends it."""
    r = server.client()
    r.delete(A, B)
    for key in (B, A):
        got: list[object] = []
        waiter = threading.Thread(
            target=lambda got=got: got.append(server.client().blmpop(20, 2, A, B, direction="LEFT")))
        waiter.start()
        time.sleep(0.3)  # let it block (if it did not, it still must get the element)
        r.rpush(key, "v1", "v2")
        waiter.join()
        assert got == [[key.encode(), [b"v1"]]]
        assert r.lrange(key, 0, -1) == [b"v2"]
        r.delete(key)
    blocked = server.client()
    blocked_id = blocked.client_id()
    got = []
    waiter = threading.Thread(target=lambda: got.append(blocked.execute_command("BZMPOP", 20, 2, A, B, "MIN")))
    waiter.start()
    time.sleep(0.3)
    assert r.client_unblock(blocked_id) is True
    waiter.join()
    assert got == [None]
    r.zadd(B, {"m": 1})
    assert blocked.zrange(B, 0, -1) == [b"m"]  # the ended waits popped nothing
