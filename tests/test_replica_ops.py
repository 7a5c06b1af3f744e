"""Replicas as full cluster citizens (issue 14): CONFIG SET reaches every replica
(also one started later and one promoted), replicas take part in the pub/sub mesh
and notify of what they apply as a Redis replica does."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from refserver import RedisRef
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

    assert router.publish("before-failover", "m") == 0   # the router's pub/sub stream to the replica is open
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
    # The replacement is the mesh's peer at that replica's place now (not the promoted process).
    replacement_sub = _subscribed(replacement, "subscribe", "after-failover")
    assert router.publish("after-failover", "m") == 1
    assert _messages_until(replacement_sub, b"m") == [("message", b"after-failover", b"m")]
    # A later CONFIG SET reaches both, and requirepass closes the replica's port too.
    assert router.config_set("requirepass", "s3cret")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=replica_port(srv, 0), socket_timeout=10).get("after")
    authed = redis.Redis(port=replica_port(srv, 0), socket_timeout=10, password="s3cret")
    authed.execute_command("READONLY")
    assert authed.get("after") == b"1"
    with pytest.raises(redis.AuthenticationError):
        srv.shard_client(0).get("after")


def _messages_until(sub, last: bytes) -> list[tuple]:
    """(type, channel, data) of every message up to the one whose data is `last`."""
    got = []
    deadline = time.monotonic() + PUBSUB_WAIT_S
    while time.monotonic() < deadline:
        message = sub.get_message(timeout=0.1)
        if message is None or message["type"] in ("subscribe", "psubscribe", "ssubscribe"):
            continue
        got.append((message["type"], message["channel"], message["data"]))
        if message["data"] == last:
            return got
    raise AssertionError(f"no message {last!r} within {PUBSUB_WAIT_S} s; got {got}")


def _subscribed(client: redis.Redis, kind: str, *names: str):
    sub = client.pubsub()
    getattr(sub, kind)(*names)
    for _ in names:
        _wait_for(lambda: (m := sub.get_message(timeout=0.1)) is not None and m["type"] == kind, kind)
    return sub


def test_replica_port_publishes_and_subscribes_across_the_mesh(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    router, primary = srv.client(), srv.shard_client(0)
    replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)   # no READONLY: as Redis Cluster
    subs = {name: _subscribed(client, "subscribe", "ch")
            for name, client in (("router", router), ("primary", primary), ("replica", replica))}
    # PUBLISH on the replica's port reaches every subscriber, and the other way round.
    assert replica.publish("ch", "from-replica") == 3
    assert router.publish("ch", "from-router") == 3
    assert primary.publish("ch", "from-primary") == 3
    for name, sub in subs.items():
        assert _messages_until(sub, b"from-primary") == [
            ("message", b"ch", b"from-replica"), ("message", b"ch", b"from-router"),
            ("message", b"ch", b"from-primary")], name
    assert router.execute_command("PUBSUB", "NUMSUB", "ch") == [b"ch", 3]
    # Sharded pub/sub: a Redis Cluster replica takes SSUBSCRIBE for its primary's slots.
    ssub = _subscribed(replica, "ssubscribe", "sch")
    assert primary.execute_command("SPUBLISH", "sch", "hello") == 1
    assert _messages_until(ssub, b"hello") == [("smessage", b"sch", b"hello")]
    assert replica.execute_command("SPUBLISH", "sch", "again") == 1
    assert _messages_until(ssub, b"again") == [("smessage", b"sch", b"again")]


KEYSPACE_SCRIPT = [("SET", "k", "v", "EX", "100"), ("HSET", "h", "f", "v"), ("SADD", "s", "a", "b"),
                   ("SREM", "s", "a"), ("PERSIST", "k"), ("DEL", "k", "h"), ("SET", "end", "1")]


def test_replica_notifies_what_it_applies_as_redis_replica(server_factory, tmp_path):
    """Subscribers on a replica's port get the events of the writes it applies, as on
    a Redis replica (and a router's subscribers get each event once, not again from
    the replica)."""
    ref = RedisRef(tmp_path / "ref-primary", ("--notify-keyspace-events", "KEA", "--repl-diskless-sync-delay", "0"))
    ref_replica = RedisRef(tmp_path / "ref-replica", ("--notify-keyspace-events", "KEA",
                                                      "--replicaof", "127.0.0.1", str(ref.port)))
    try:
        _wait_for(lambda: ref_replica.client().info("replication")["master_link_status"] == "up",
                  "the reference replica's link")
        ref_clients = [ref_replica.client(), ref.client()]   # held: a pubsub dies with its client's pool
        ref_replica_sub = _subscribed(ref_clients[0], "psubscribe", "__key*__:*")
        ref_primary_sub = _subscribed(ref_clients[1], "psubscribe", "__key*__:*")
        for command in KEYSPACE_SCRIPT:
            ref_clients[1].execute_command(*command)
        expected_on_replica = _messages_until(ref_replica_sub, b"end")
        expected_on_primary = _messages_until(ref_primary_sub, b"end")
    finally:
        ref_replica.stop()
        ref.stop()
    srv = _start(server_factory, tmp_path)
    router = srv.client()
    assert router.config_set("notify-keyspace-events", "KEA")
    replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)
    replica_sub = _subscribed(replica, "psubscribe", "__key*__:*")
    router_sub = _subscribed(router, "psubscribe", "__key*__:*")
    for command in KEYSPACE_SCRIPT:
        router.execute_command(*command)
    assert _messages_until(replica_sub, b"end") == expected_on_replica
    assert _messages_until(router_sub, b"end") == expected_on_primary   # once: not again from the replica
    # A read of an expired key on the replica deletes nothing and notifies nothing of its
    # own (the primary, whose active expiry is off here, has not deleted it either).
    srv.shard_client(0).execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 0)
    router.execute_command("SET", "gone", "1", "PX", "50")
    router.execute_command("SET", "end", "2")
    _messages_until(replica_sub, b"end")
    time.sleep(0.1)
    replica.execute_command("READONLY")
    assert replica.get("gone") is None
    assert replica.exists("gone") == 0
    assert replica_sub.get_message(timeout=0.3) is None
