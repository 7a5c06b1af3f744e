"""BLPOP, BRPOP, BZPOPMIN and BZPOPMAX over keys on several shards, through the
router (server/txn.py start_key_pop): the first key in argument order with
something to pop wins at call time; otherwise the first push to any key serves
the client, blocked clients being served in arrival order per key, as Redis."""

from __future__ import annotations

import socket
import threading

from test_supervisor import wait_until
from test_txn import A, A2, B, B2


def test_pops_over_keys_on_two_shards_match_redis(pair):
    pair.same("RPUSH", B, "b1", "b2")
    pair.same("RPUSH", A2, "a1")
    pair.same("BLPOP", A, B, A2, "0.1")  # A empty: B is the first with something
    pair.same("BRPOP", A, B, A2, "0.1")
    pair.same("BRPOP", B, A2, "0")
    pair.same("BLPOP", A, B, "0.1")  # all empty: times out
    pair.same("ZADD", B2, "1", "x", "2", "y")
    pair.same("ZADD", A, "5", "z")
    pair.same("BZPOPMIN", A2, B2, A, "0.1")
    pair.same("BZPOPMAX", A, B2, "0.1")
    pair.same("BZPOPMAX", B, A2, "0.1")
    pair.same("SET", A2, "string")
    pair.same("BLPOP", B, A2, "0.1")  # WRONGTYPE
    pair.same("BZPOPMIN", B, A2, "0.1")
    pair.same("BLPOP", B, A, "-1")
    pair.same("BLPOP", B, A, "nan")
    pair.same("MULTI")
    pair.same("BLPOP", A, B, "0")  # never blocks inside MULTI
    pair.same("RPUSH", B, "m")
    pair.same("BRPOP", A, B, "0")
    pair.same("EXEC")


def test_pops_over_keys_on_two_shards_match_redis_resp3(pair3):
    pair3.same("ZADD", B, "1.5", "x")
    pair3.same("BZPOPMIN", A, B, "0.1")
    pair3.same("BZPOPMAX", A, B, "0.1")
    pair3.same("RPUSH", A, "v")
    pair3.same("BLPOP", B, A, "0.1")
    pair3.same("BLPOP", B, A, "0.1")


def waiters(server) -> int:
    """Blocked commands parked at the shards (a cross-shard one counts once per shard)."""
    return server.client().info("persistence")["shard_blocked_waiters"]


def blocked(server, command: tuple, results: list, total: int) -> threading.Thread:
    """Run a blocking command in a thread; return once `total` waits are parked at the shards."""
    client = server.client()
    t = threading.Thread(target=lambda: results.append(client.execute_command(*command)))
    t.start()
    wait_until(lambda: waiters(server) == total, f"{command[0]} to block")
    return t


def test_a_push_to_either_shard_serves_the_blocked_client(server):
    r = server.client()
    r.delete(A, B, A2, B2)
    for key in (B, A):
        got: list = []
        wait_until(lambda: waiters(server) == 0, "earlier waits to end")
        t = blocked(server, ("BLPOP", A, B, 20), got, 2)
        r.rpush(key, "v1", "v2")
        t.join()
        assert got == [(key.encode(), b"v1")]
        assert r.lrange(key, 0, -1) == [b"v2"]
        r.delete(key)
    got = []
    wait_until(lambda: waiters(server) == 0, "earlier waits to end")
    t = blocked(server, ("BZPOPMAX", B2, A2, 20), got, 2)
    r.zadd(A2, {"m": 3, "n": 4})
    t.join()
    assert got == [(A2.encode(), b"n", 4.0)]
    assert r.zrange(A2, 0, -1) == [b"m"]
    got = []
    t = blocked(server, ("BRPOP", A, B, "0.3"), got, 0)
    t.join()
    assert got == [None]
    info = r.info("persistence")
    assert info["xshard_locked_keys"] == 0


def test_blocked_clients_are_served_in_arrival_order_per_key(server):
    """A cross-shard BLPOP blocked first, a one-shard BLPOP on the same key second and
    another cross-shard one third: three pushes serve them in that order."""
    r = server.client()
    r.delete(A, B)
    wait_until(lambda: waiters(server) == 0, "earlier waits to end")
    order: list[list] = [[], [], []]
    threads = [blocked(server, ("BLPOP", A, B, 20), order[0], 2),
               blocked(server, ("BLPOP", B, 20), order[1], 3),
               blocked(server, ("BLPOP", B, A, 20), order[2], 5)]
    for n in range(3):
        r.rpush(B, f"e{n}")
        threads[n].join()
    assert order == [[(B.encode(), b"e0")], [(B.encode(), b"e1")], [(B.encode(), b"e2")]]
    assert r.exists(A, B) == 0


def test_client_unblock_ends_a_cross_shard_blpop(server):
    r = server.client()
    r.delete(A, B)
    for mode, expect in (("TIMEOUT", None), ("ERROR", "UNBLOCKED")):
        victim = server.client()
        victim_id = victim.client_id()
        got: list = []

        def run(victim=victim, got=got) -> None:
            try:
                got.append(victim.blpop([A, B], 20))
            except Exception as e:  # the UNBLOCKED error
                got.append(str(e))

        wait_until(lambda: waiters(server) == 0, "earlier waits to end")
        t = threading.Thread(target=run)
        t.start()
        wait_until(lambda: waiters(server) == 2, "BLPOP to block")
        assert r.client_unblock(victim_id, error=(mode == "ERROR")) is True
        t.join()
        assert got == [None] if expect is None else expect in got[0]
    # Nothing is left waiting: a push stays in the list.
    r.rpush(A, "kept")
    assert r.lrange(A, 0, -1) == [b"kept"]


def test_a_client_that_goes_away_takes_nothing(server):
    """A client blocked in a cross-shard BLPOP closes its connection: every shard's
    wait ends, so later pushes stay in the lists."""
    r = server.client()
    r.delete(A, B)
    wait_until(lambda: waiters(server) == 0, "earlier waits to end")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"*4\r\n$5\r\nBLPOP\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n0\r\n"
                 % (len(A), A.encode(), len(B), B.encode()))
    wait_until(lambda: waiters(server) == 2, "BLPOP to block")
    sock.close()
    wait_until(lambda: waiters(server) == 0, "the waits to end")
    r.rpush(A, "a")
    r.rpush(B, "b")
    assert r.lrange(A, 0, -1) == [b"a"] and r.lrange(B, 0, -1) == [b"b"]


def test_pushes_to_both_shards_at_once_serve_one_element(server):
    """A cross-shard MULTI pushes to both keys a blocked BLPOP waits on: both shards
    may serve it before the router ends the other wait; the client gets one element
    and the other stays (given back where it was taken when served twice)."""
    r = server.client()
    for n in range(5):
        r.delete(A, B)
        wait_until(lambda: waiters(server) == 0, "earlier waits to end")
        got: list = []
        t = blocked(server, ("BLPOP", A, B, 20), got, 2)
        pipe = r.pipeline(transaction=True)
        pipe.rpush(A, f"a{n}", "a-next")
        pipe.rpush(B, f"b{n}", "b-next")
        pipe.execute()
        t.join()
        assert got in ([(A.encode(), f"a{n}".encode())], [(B.encode(), f"b{n}".encode())])
        expect = sorted({f"a{n}".encode(), f"b{n}".encode(), b"a-next", b"b-next"} - {got[0][1]})
        wait_until(lambda expect=expect: sorted(r.lrange(A, 0, -1) + r.lrange(B, 0, -1)) == expect,
                   "the other element to be back (or never taken)")
        assert r.lrange(A, -1, -1) == [b"a-next"] and r.lrange(B, -1, -1) == [b"b-next"]
