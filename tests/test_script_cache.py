"""One script cache for the whole server (issue 16), through the router on two shards
and on shard ports: a script EVAL'd or loaded on any shard runs by EVALSHA with keys on
every shard, also after a shard restarts, and SCRIPT EXISTS/FLUSH agree everywhere
(server/script_cache.py, server/script_retry.py)."""

from __future__ import annotations

import os
import signal
import time

import redis

from durakv.shards.luaenv import sha1hex
from refserver import RawConn
from durakv.shards.slots import key_slot, slot_owner_table
from test_txn import A, B

BODY = "redis.call('INCR', KEYS[1]) return {KEYS[1], redis.call('GET', KEYS[1]), #KEYS}"
SHA = sha1hex(BODY.encode()).decode()
OWNER = slot_owner_table(2)


def shard_of(key: str) -> int:
    return OWNER[key_slot(key.encode())]


def test_a_script_evald_on_one_shard_runs_by_sha_on_every_shard(pair):
    pair.same("SCRIPT", "FLUSH")
    pair.same("EVALSHA", SHA, "1", A)  # NOSCRIPT on both
    pair.same("EVAL", BODY, "1", A)  # cached where A lives
    pair.same("SCRIPT", "EXISTS", SHA, "0" * 40)
    pair.same("EVALSHA", SHA, "1", B)  # B's shard never saw it
    pair.same("EVALSHA", SHA, "2", A, B)  # across shards
    pair.same("EVALSHA_RO", sha1hex(b"return redis.call('GET', KEYS[1])").decode(), "1", B)  # not cached anywhere
    pair.same("EVAL", "return redis.call('GET', KEYS[1])", "1", A)
    pair.same("EVALSHA_RO", sha1hex(b"return redis.call('GET', KEYS[1])").decode(), "1", B)
    pair.same("SCRIPT", "FLUSH")
    pair.same("EVALSHA", SHA, "1", B)
    pair.same("EVALSHA", SHA, "0")
    pair.same("SCRIPT", "EXISTS", SHA)


def _restart_shard(srv, shard: int, key: str) -> None:
    """kill -9 a shard; return once it serves again, on its port and through the
    router (whose link to it reconnects a moment after the port answers)."""
    old = srv.child_pid("shard", shard)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    probe = redis.Redis(port=srv.shard_port(shard), socket_timeout=5)
    router = srv.client()
    while time.monotonic() < deadline:
        try:
            if srv.child_pid("shard", shard) != old and probe.ping():
                router.exists(key)
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError, AssertionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"shard {shard} did not serve again within 60 s")


def test_the_cache_outlives_a_shard_restart(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    a_shard = shard_of(A)
    assert r.eval(BODY, 1, A)[1] == b"1"  # cached on A's shard only
    _restart_shard(srv, 1 - a_shard, B)  # B's shard restarts (it never had it)
    assert r.evalsha(SHA, 1, B)[1] == b"1"  # found on A's shard, loaded on every shard
    _restart_shard(srv, a_shard, A)  # A's shard restarts with an empty cache
    assert r.evalsha(SHA, 1, A)[1] == b"2"  # found on B's shard
    assert r.script_exists(SHA) == [True]
    # On a shard port (cluster clients): the script is found on the other shard too.
    node = srv.shard_client(a_shard)
    node.script_flush()  # on a shard port, as through the router: every shard's cache
    assert r.script_exists(SHA) == [False]
    other = srv.shard_client(1 - a_shard)
    assert other.eval(BODY, 1, B)[1] == b"2"
    assert node.script_exists(SHA) == [True]
    assert node.evalsha(SHA, 1, A)[1] == b"3"


def test_a_function_loaded_on_a_shard_port_is_on_every_shard(server):
    """FUNCTION LOAD/DELETE on one shard's port reach every shard (through the router
    they always did), so an FCALL through the router finds it wherever its keys route."""
    r = server.client()
    node = server.shard_client(shard_of(A))
    library = ("#!lua name=nodelib\nredis.register_function('bump', function(keys) "
               "return redis.call('INCR', keys[1]) end)")
    r.delete(A, B)
    assert node.function_load(library) in ("nodelib", b"nodelib")  # loaded on A's shard
    deadline = time.monotonic() + 10
    while True:  # the other shards take it once its shard has it (not waited for by the reply)
        try:
            assert r.fcall("bump", 1, B) == 1
            break
        except redis.ResponseError as e:
            assert "Function not found" in str(e), e
            assert time.monotonic() < deadline, "the function never reached B's shard"
            time.sleep(0.05)
    assert r.fcall("bump", 1, A) == 1
    assert node.function_delete("nodelib")
    for key in (A, B):  # gone from every shard once the others took the change
        deadline = time.monotonic() + 10
        while True:
            try:
                r.fcall("bump", 1, key)
            except redis.ResponseError as e:
                assert "Function not found" in str(e)
                break
            assert time.monotonic() < deadline, f"the delete never reached {key}'s shard"
            time.sleep(0.05)


def test_evalsha_queued_in_multi_on_a_shard_port_finds_the_script(server, redis_ref):
    """On a shard port, EVALSHA queued in MULTI runs a script loaded on that node (as on
    a Redis Cluster node) and one cached on another shard only (one cache for the server,
    as outside MULTI); an unknown sha fails inside EXEC with NOSCRIPT: as on one
    redis-server with the scripts loaded."""
    stamp = time.time_ns()
    here = f"-- here {stamp}\nreturn redis.call('INCR', KEYS[1])"
    elsewhere = f"-- elsewhere {stamp}\nreturn {{KEYS[1], redis.call('GET', KEYS[1])}}"
    key, tagged = A, "{" + A + "}x"
    node = RawConn(server.shard_port(shard_of(A)))
    other = RawConn(server.shard_port(1 - shard_of(A)))
    theirs = RawConn(redis_ref.port)
    try:
        for conn in (node, theirs):
            conn.pipeline([("DEL", key, tagged), ("SCRIPT", "LOAD", here)])
        other.call("EVAL", elsewhere, "1", B)  # cached on B's shard only
        theirs.call("EVAL", elsewhere, "1", B)
        commands = [("MULTI",), ("EVALSHA", sha1hex(here.encode()).decode(), "1", key), ("SET", tagged, "t"),
                    ("EVALSHA", sha1hex(elsewhere.encode()).decode(), "1", tagged), ("EXEC",),
                    ("MULTI",), ("EVALSHA", "f" * 40, "1", key), ("INCR", key), ("EXEC",), ("GET", key)]
        got, expected = node.pipeline(commands), theirs.pipeline(commands)
        assert got == expected, f"durakv {got!r} != redis {expected!r}"
    finally:
        for conn in (node, other, theirs):
            conn.close()
