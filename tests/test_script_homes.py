"""A router's knowledge of which shards have a script cached (server/script_scope.py
`homes`) follows the truth (issue 16): a SCRIPT FLUSH through a shard port or another
router, and a shard restarted by kill -9 (its cache empty), make the router's next
EVALSHA there hold its client's later requests while it may be answered NOSCRIPT, found
on another shard and sent again, so the requests pipelined after it run after it, as
on one redis-server (whose one cache has the script)."""

from __future__ import annotations

import hashlib
from time import time_ns

from refserver import RawConn
from test_pubsub import _one_per_router
from test_script_cache import _restart_shard, shard_of
from test_script_undeclared import same_shard_keys
from test_txn import A, B


def _body() -> str:
    return (f"-- {time_ns()}\nlocal v = redis.call('GET', KEYS[1]) "
            "redis.call('SET', KEYS[1], 'script') return v")


def _pipeline(key: str, other: str, sha: str) -> list[tuple]:
    """The EVALSHA (its shard believed to have it), then followers on its shard and the other."""
    return [("EVALSHA", sha, "1", key), ("GET", key), ("SET", key, "after"), ("APPEND", other, "x"),
            ("EVALSHA", sha, "1", key), ("GET", key)]


def _same_as_redis(ours: RawConn, redis_port: int, setup: list[tuple], commands: list[tuple]) -> None:
    theirs = RawConn(redis_port)
    try:
        theirs.pipeline([("FLUSHALL",), ("SCRIPT", "FLUSH")])
        theirs.pipeline(setup)
        expected = theirs.pipeline(commands)
    finally:
        theirs.close()
    got = ours.pipeline(commands)
    assert got == expected, f"durakv {got!r} != redis {expected!r}"


def test_a_flush_on_a_shard_port_is_seen_by_the_router(server, redis_ref):
    """The router learnt (SCRIPT LOAD) that A's shard has the script; a SCRIPT FLUSH on
    a shard port empties every cache, then the script is EVAL'd on B's shard's port
    only: the router's EVALSHA to A's shard is answered NOSCRIPT and found on B's."""
    k1, k2 = same_shard_keys(A, 2)
    body = _body()
    sha = hashlib.sha1(body.encode()).hexdigest()
    ours = RawConn(server.port)
    try:
        ours.pipeline([("FLUSHALL",), ("SET", k1, "before")])
        assert ours.call("SCRIPT", "LOAD", body) == b"$40\r\n" + sha.encode() + b"\r\n"
        server.shard_client(shard_of(A)).script_flush()
        assert server.shard_client(shard_of(B)).eval(body, 1, B) is None  # cached on B's shard only
        _same_as_redis(ours, redis_ref.port, [("SET", k1, "before"), ("EVAL", body, "1", B)],
                       _pipeline(k1, k2, sha))
    finally:
        ours.close()


def test_a_flush_through_another_router_is_seen(server_factory, redis_ref):
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    by_router, spare = _one_per_router(srv.port)
    ours, other = by_router.values()
    k1, k2 = same_shard_keys(A, 2)
    body = _body()
    sha = hashlib.sha1(body.encode()).hexdigest()
    try:
        ours.pipeline([("SET", k1, "before"), ("SCRIPT", "LOAD", body)])  # this router: every shard has it
        assert other.call("SCRIPT", "FLUSH") == b"+OK\r\n"  # through the other router
        srv.shard_client(shard_of(B)).eval(body, 1, B)  # cached on B's shard only
        _same_as_redis(ours, redis_ref.port, [("SET", k1, "before"), ("EVAL", body, "1", B)],
                       _pipeline(k1, k2, sha))
    finally:
        for conn in [*by_router.values(), *spare]:
            conn.close()


def test_a_shard_restarted_by_kill_9_has_no_scripts_for_the_router(server_factory, redis_ref):
    """SCRIPT LOAD through the router (every shard has it), then A's shard is killed and
    comes back with an empty cache: the EVALSHA there is found on B's shard."""
    srv = server_factory(shards=2)
    k1, k2 = same_shard_keys(A, 2)
    body = _body()
    sha = hashlib.sha1(body.encode()).hexdigest()
    ours = RawConn(srv.port)
    try:
        ours.pipeline([("SET", k1, "before"), ("SCRIPT", "LOAD", body)])
        _restart_shard(srv, shard_of(A), A)
        assert ours.call("SCRIPT", "EXISTS", sha) == b"*1\r\n:1\r\n"  # B's shard still has it
        _same_as_redis(ours, redis_ref.port, [("SET", k1, "before"), ("SCRIPT", "LOAD", body)],
                       _pipeline(k1, k2, sha))
    finally:
        ours.close()
