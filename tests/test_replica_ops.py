"""Replicas as full cluster citizens (issue 14): CONFIG SET reaches every replica
(also one started later and one promoted), replicas take part in the pub/sub mesh
and notify of what they apply as a Redis replica does."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from test_replicas import WAIT_S, _start, _wait_replicas_online, replica_port

PUBSUB_WAIT_S = 10


def _replica(srv, shard: int = 0, **kwargs) -> redis.Redis:
    client = redis.Redis(port=replica_port(srv, shard), socket_timeout=10, **kwargs)
    client.execute_command("READONLY")
    return client


def _config(client: redis.Redis, name: str) -> str:
    value = client.config_get(name)[name]
    return value.decode() if isinstance(value, bytes) else value


def _encoding(client: redis.Redis, key: str) -> bytes:
    return client.execute_command("OBJECT", "ENCODING", key)


def _retry(fn, what: str):
    """fn() until it answers without a connection error or CLUSTERDOWN (a failover)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError) as e:
            assert time.monotonic() < deadline, f"{what}: still failing: {e}"
            time.sleep(0.02)
        except redis.ResponseError as e:
            if "CLUSTERDOWN" not in str(e) and "outcome" not in str(e):
                raise
            assert time.monotonic() < deadline, f"{what}: still failing: {e}"
            time.sleep(0.02)


def _wait_for(fn, what: str):
    deadline = time.monotonic() + WAIT_S
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: never happened"
        time.sleep(0.02)


def test_config_set_reaches_replicas_also_replacement_and_promoted(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    router, primary = srv.client(), srv.shard_client(0)
    # Through the router: a router setting and a shard parameter (how the shard encodes).
    assert router.config_set("slowlog-log-slower-than", 0)
    assert router.config_set("hash-max-listpack-entries", 1)
    replica = _replica(srv)
    assert _config(replica, "slowlog-log-slower-than") == "0"
    assert _config(replica, "hash-max-listpack-entries") == "1"
    primary.hset("h1", mapping={"a": 1, "b": 2})
    assert primary.execute_command("WAIT", 1, 5000) == 1
    assert _encoding(replica, "h1") == _encoding(primary, "h1") == b"hashtable"
    replica.slowlog_reset()
    replica.get("h-missing")
    assert any(entry["command"] == b"GET h-missing" for entry in replica.slowlog_get())
    # On the replica's port: every router and shard takes it.
    assert replica.config_set("hash-max-listpack-entries", 2)
    assert _config(router, "hash-max-listpack-entries") == _config(primary, "hash-max-listpack-entries") == "2"
    assert router.config_set("hash-max-listpack-entries", 1)

    # Promotion: the replica's process becomes the primary; a replacement replica starts.
    os.kill(srv.child_pid("shard", 0), signal.SIGKILL)
    _retry(lambda: srv.client().set("after", "1"), "a write after the failover")
    _wait_replicas_online(srv, 1)
    promoted = srv.shard_client(0)
    assert _config(promoted, "hash-max-listpack-entries") == "1"
    promoted.hset("h2", mapping={"a": 1, "b": 2})
    assert _encoding(promoted, "h2") == b"hashtable"
    assert promoted.execute_command("WAIT", 1, 5000) == 1
    replacement = _retry(lambda: _replica(srv), "the replacement replica")
    assert _config(replacement, "hash-max-listpack-entries") == "1"
    assert _config(replacement, "slowlog-log-slower-than") == "0"
    assert _encoding(replacement, "h2") == b"hashtable"
    # A later CONFIG SET reaches both, and requirepass closes the replica's port too.
    assert router.config_set("requirepass", "s3cret")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=replica_port(srv, 0), socket_timeout=10).get("after")
    authed = redis.Redis(port=replica_port(srv, 0), socket_timeout=10, password="s3cret")
    authed.execute_command("READONLY")
    assert authed.get("after") == b"1"
    with pytest.raises(redis.AuthenticationError):
        srv.shard_client(0).get("after")
