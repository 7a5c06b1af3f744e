"""min-replicas-to-write / min-replicas-max-lag (shards/min_replicas.py): writes refused
with Redis' NOREPLICAS while fewer good replicas (compared with a real redis-server
7.0, which has none), and, with enough, each write acknowledged only once that many
replicas applied it."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import redis
from refserver import Pair, RedisRef
from test_replicas import WAIT_S, _start, _wait_replicas_online, replica_port

NOREPLICAS = "NOREPLICAS Not enough good replicas to write."


def _good(client: redis.Redis) -> int | None:
    """INFO replication's min_slaves_good_slaves (None: not shown)."""
    return client.info("replication").get("min_slaves_good_slaves")


def test_without_good_replicas_writes_are_refused_as_redis_refuses_them(server_factory, tmp_path):
    srv = server_factory(shards=1)
    ref = RedisRef(tmp_path / "ref")
    pair = Pair(srv.port, ref.port)
    try:
        pair.same("SET", "k", "before")
        pair.same("CONFIG", "GET", "min-slaves-max-lag")
        pair.same("CONFIG", "SET", "min-replicas-to-write", "1")
        pair.same("CONFIG", "GET", "min-slaves-to-write")
        assert pair.same("SET", "k", "v").message == NOREPLICAS.encode()
        pair.same("INCR", "n")
        pair.same("GET", "k")
        pair.same("EVAL", "return 1", "0")
        # Scripts as Redis' scriptPrepareForRun/scriptCall: a flagged script that may write is
        # refused as a whole, an unflagged one at its first write; reads and no-writes run.
        pair.same("EVAL", "#!lua flags=no-writes\nreturn redis.call('get', KEYS[1])", "1", "k")
        pair.same("EVAL", "return redis.call('get', KEYS[1])", "1", "k")
        assert pair.same("EVAL", "#!lua\nreturn redis.call('get', KEYS[1])", "1", "k").message == NOREPLICAS.encode()
        assert pair.same("EVAL", "return redis.call('set', KEYS[1], 1)", "1", "k").message.startswith(b"NOREPLICAS ")
        pair.same("EVAL", "return redis.pcall('set', KEYS[1], 1)['err']", "1", "k")
        pair.same("FUNCTION", "LOAD", "#!lua name=lib\nredis.register_function('w', function(k) "
                  "return redis.call('set', k[1], 1) end)")
        pair.same("FCALL", "w", "1", "k")
        pair.same("GET", "k")
        pair.same("FUNCTION", "FLUSH")
        assert _good(srv.client()) == _good(ref.client()) == 0
        # The shard's own port refuses too, and so does a shard restarted since the CONFIG SET.
        with pytest.raises(redis.ResponseError, match=f"^{NOREPLICAS}$"):
            srv.shard_client(0).set("k", "v")
        os.kill(srv.child_pid("shard", 0), signal.SIGKILL)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                srv.client().set("k", "v")
                pytest.fail("the restarted shard accepted a write: it did not get min-replicas-to-write")
            except redis.ResponseError as e:
                if str(e) == NOREPLICAS:
                    break
                assert isinstance(e, redis.exceptions.ClusterDownError), e
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the restarted shard never answered"
            time.sleep(0.05)
        pair.close()
        pair = Pair(srv.port, ref.port)
        # min-replicas-max-lag 0 turns the check off, as in Redis.
        pair.same("CONFIG", "SET", "min-replicas-max-lag", "0")
        pair.same("SET", "k", "v")
        assert _good(srv.client()) is _good(ref.client()) is None
        pair.same("CONFIG", "SET", "min-replicas-max-lag", "10")
        pair.same("CONFIG", "SET", "min-replicas-to-write", "0")
        pair.same("SET", "k", "after")
        pair.same("GET", "k")
    finally:
        pair.close()
        ref.stop()


def test_an_exec_holding_a_write_is_aborted_without_good_replicas(server_factory):
    srv = server_factory(shards=1)
    queued, other = srv.client(), srv.client()
    queued.set("xx", 1)
    pipe = queued.pipeline(transaction=True)
    pipe.incr("xx")
    # As redis' multi.tcl: the state changes after the write was queued.
    other.config_set("min-replicas-to-write", 2)
    with pytest.raises(redis.ResponseError, match=f"^Transaction discarded because of: {NOREPLICAS}$"):
        pipe.execute()
    assert queued.get("xx") == b"1"
    reads = queued.pipeline(transaction=True)
    reads.get("xx")
    assert reads.execute() == [b"1"]


def test_min_replicas_in_the_config_file(server_factory, tmp_path):
    config = tmp_path / "durakv.toml"
    config.write_text("[settings]\nmin-replicas-to-write = 1\nmin-replicas-max-lag = 5\n")
    srv = server_factory(shards=1, extra_args=("--config", str(config)))
    with pytest.raises(redis.ResponseError, match=f"^{NOREPLICAS}$"):
        srv.client().set("k", "v")
    assert srv.client().config_get("min-replicas-*") == {"min-replicas-to-write": "1",
                                                         "min-replicas-max-lag": "5"}


def _set_on_socket(port: int, key: bytes, value: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
    return sock


def test_a_write_is_acknowledged_once_enough_replicas_applied_it(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    client = srv.client()
    client.config_set("min-replicas-to-write", 1)
    assert client.set("k", "v1")
    assert _good(client) == 1
    replica_pid = srv.child_pid("replica", "0 0")
    os.kill(replica_pid, signal.SIGSTOP)
    try:
        # The write is durable at once, but its replica cannot apply it: no acknowledgement.
        sock = _set_on_socket(srv.port, b"k", b"v2")
        sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            sock.recv(100)
        assert client.get("k") == b"v2"   # a read on the primary sees the durable write
    finally:
        os.kill(replica_pid, signal.SIGCONT)
    sock.settimeout(WAIT_S)
    assert sock.recv(100) == b"+OK\r\n"
    sock.close()
    replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)
    replica.execute_command("READONLY")
    assert replica.get("k") == b"v2"   # acknowledged, so applied: no WAIT needed


def test_a_stalled_replica_stops_being_good_after_max_lag(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    client = srv.client()
    client.config_set("min-replicas-max-lag", 1)
    client.config_set("min-replicas-to-write", 1)
    replica_pid = srv.child_pid("replica", "0 0")
    os.kill(replica_pid, signal.SIGSTOP)
    try:
        # Accepted while the replica still counted as good: acknowledged once it no longer
        # does (durable, it cannot be taken back); then writes are refused.
        sock = _set_on_socket(srv.port, b"k", b"accepted")
        sock.settimeout(WAIT_S)
        assert sock.recv(100) == b"+OK\r\n"
        sock.close()
        with pytest.raises(redis.ResponseError, match=f"^{NOREPLICAS}$"):
            client.set("k", "refused")
        assert _good(client) == 0
    finally:
        os.kill(replica_pid, signal.SIGCONT)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            assert client.set("k", "again")
            break
        except redis.ResponseError as e:
            assert str(e) == NOREPLICAS and time.monotonic() < deadline
            time.sleep(0.05)
    # A replica that dies is no longer good at once (as a closed replica link in Redis).
    os.kill(replica_pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            client.set("k", "while-it-is-gone")
        except redis.ResponseError as e:
            assert str(e) == NOREPLICAS
            break
        assert time.monotonic() < deadline, "writes still accepted with the only replica dead"
        time.sleep(0.01)
    _wait_replicas_online(srv, 1)
    _retry_set(client)


def _retry_set(client: redis.Redis) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            assert client.set("k", "with-the-replacement")
            return
        except redis.ResponseError as e:
            assert str(e) == NOREPLICAS and time.monotonic() < deadline
            time.sleep(0.05)

