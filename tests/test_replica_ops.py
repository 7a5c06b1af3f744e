"""Replicas as full cluster citizens (issue 14): CONFIG SET reaches every replica
(also one started later and one promoted), replicas take part in the pub/sub mesh
and notify of what they apply as a Redis replica does."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import redis

from proctools import free_port
from refserver import RedisRef
from test_durability import write_config
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


def test_replicas_listen_with_tls_and_cluster_commands_announce_their_tls_ports(server_factory, tmp_path):
    from redis.cluster import LoadBalancingStrategy, RedisCluster
    from test_tls import Certs, tls_client

    certs = Certs(tmp_path / "certs")
    tls_port = free_port()
    srv = _start(server_factory, tmp_path, shards=2, tls_port=tls_port, **{
        name.replace("-", "_"): value for name, value in certs.settings().items()})
    tls_shard_ports = [tls_port + 1 + i for i in range(2)]
    tls_replica_ports = [tls_port + 1 + 2 + i for i in range(2)]   # after the TLS shard ports, as for plain ones
    primary = tls_client(tls_shard_ports[0], certs)
    primary.set("{b}k", "v")
    assert primary.execute_command("WAIT", 1, 5000) == 1
    replica = tls_client(tls_replica_ports[0], certs)
    replica.execute_command("READONLY")
    assert replica.get("{b}k") == b"v"
    # A TLS client is told TLS ports, replicas included (Redis with tls-cluster yes); a plain one plain ports.
    assert [[entry[1] for entry in shard[2:]] for shard in replica.execute_command("CLUSTER", "SLOTS")] == [
        [tls_shard_ports[i], tls_replica_ports[i]] for i in range(2)]
    assert [[entry[1] for entry in shard[2:]] for shard in srv.shard_client(0).execute_command("CLUSTER", "SLOTS")] \
        == [[srv.shard_port(i), replica_port(srv, i)] for i in range(2)]
    shards = srv.shard_client(1).execute_command("CLUSTER", "SHARDS")
    assert [[(node[b"port"], node[b"tls-port"], node[b"role"]) for node in shard[b"nodes"]] for shard in shards] == [
        [(srv.shard_port(i), tls_shard_ports[i], b"master"), (replica_port(srv, i), tls_replica_ports[i], b"replica")]
        for i in range(2)]
    nodes = replica.execute_command("CLUSTER", "NODES")
    nodes = nodes.decode() if isinstance(nodes, bytes) else nodes
    assert f"127.0.0.1:{tls_replica_ports[0]}@{tls_replica_ports[0] + 10000} myself,slave" in nodes
    # A write on the replica's TLS port is sent to the primary's TLS port.
    with pytest.raises(redis.ResponseError, match=rf"^(MOVED )?\d+ 127.0.0.1:{tls_shard_ports[0]}$"):
        replica.set("{b}k", "w")
    # A cluster client over TLS reading from replicas.
    cluster = RedisCluster(host="127.0.0.1", port=tls_shard_ports[1], ssl=True, ssl_ca_certs=certs.ca_file,
                           ssl_certfile=certs.client_cert, ssl_keyfile=certs.client_key, socket_timeout=30,
                           load_balancing_strategy=LoadBalancingStrategy.RANDOM_REPLICA)
    assert {n.port for n in cluster.get_replicas()} == set(tls_replica_ports)
    assert cluster.get("{b}k") == b"v"
    cluster.close()


def test_overlapping_replica_tls_port_is_refused_with_one_line(tmp_path):
    from test_operator_mistakes import durakv, one_line

    port = free_port()
    out = durakv("serve", "--data-dir", str(tmp_path / "data"), "--port", str(port), "--shards", "1",
                 "--replicas", "1", "--config", write_config(tmp_path, tls_port=port + 10,
                                                             tls_replica_port_base=port + 11,
                                                             tls_shard_port_base=port + 11))
    assert out.returncode != 0
    assert "shard 0 replica 0's tls-port" in one_line(out) and "do not overlap" in one_line(out)


def _kill_and_wait_gone(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while os.path.exists(f"/proc/{pid}") and _state(pid) not in ("Z", "X", ""):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def test_lagging_replica_starts_from_s3_when_the_log_no_longer_reaches_its_snapshot(server_factory, s3, tmp_path):
    """The replica stops (SIGSTOP) while writes go on, a snapshot goes to S3, the
    primary drops the segments it covers, and the local snapshot cache is lost: the
    replica that starts then loads S3's snapshot plus the local log after it."""
    from snapshot_support import cli

    from durakv.log import layout
    from durakv.log.manifest import load_manifest
    from durakv.snapshotter.local import list_local

    _, _, url = s3
    srv = _start(server_factory, tmp_path, snapshot_url=url, segment_size_bytes=4096, snapshotter=False)
    router = srv.client()
    for i in range(200):
        router.set(f"early{i}", f"v{i}" * 10)
    assert router.execute_command("WAIT", 1, 5000) == 1
    lagging = srv.child_pid("replica", "0 0")
    os.kill(lagging, signal.SIGSTOP)
    try:
        for i in range(300):
            router.set(f"late{i}", f"w{i}" * 10)
        cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
        shard_dir = layout.shard_dir(srv.data_dir, 0)
        log_dir = layout.log_dir_of(shard_dir)
        _wait_for(lambda: load_manifest(log_dir).first_seq > 1, "the primary drops the segments S3 covers")
        for snapshot in list_local(shard_dir):   # the local cache is lost
            os.unlink(snapshot.manifest_path)
            os.unlink(snapshot.rdb_path)
        for i in range(50):   # records after S3's snapshot, only in the local log
            router.set(f"after{i}", f"x{i}")
    finally:
        _kill_and_wait_gone(lagging)
    _wait_replicas_online(srv, 1)
    replica = _retry(lambda: _replica(srv), "the restarted replica")
    assert router.execute_command("WAIT", 1, 5000) == 1
    expected = {**{f"early{i}": f"v{i}" * 10 for i in range(200)}, **{f"late{i}": f"w{i}" * 10 for i in range(300)},
                **{f"after{i}": f"x{i}" for i in range(50)}}
    keys = list(expected)
    pipe = replica.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    assert pipe.execute() == [expected[k].encode() for k in keys]
    assert replica.dbsize() == len(expected)
    assert "a replica starts from s3://" in srv.log()
    assert "cannot start" not in srv.log()
    assert not os.path.exists(layout.replica_bootstrap_dir(shard_dir, 0))


def test_replica_without_a_store_snapshot_to_start_from_says_why_and_leaves_its_shard_serving(server_factory,
                                                                                              tmp_path):
    from snapshot_support import cli

    from durakv.log import layout
    from durakv.log.manifest import load_manifest
    from durakv.snapshotter.local import list_local

    store = tmp_path / "store"
    url = f"file://{store}"
    srv = _start(server_factory, tmp_path, snapshot_url=url, segment_size_bytes=4096, snapshotter=False)
    router = srv.client()
    for i in range(300):
        router.set(f"k{i}", f"v{i}" * 10)
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    shard_dir = layout.shard_dir(srv.data_dir, 0)
    _wait_for(lambda: load_manifest(layout.log_dir_of(shard_dir)).first_seq > 1, "the primary drops segments")
    for snapshot in list_local(shard_dir):
        os.unlink(snapshot.manifest_path)
        os.unlink(snapshot.rdb_path)
    shutil.rmtree(store)   # and the store is gone too
    _kill_and_wait_gone(srv.child_pid("replica", "0 0"))
    _wait_for(lambda: "shard 0 replica 0 cannot start" in srv.log(), "the replica's reason")
    line = next(line for line in srv.log().splitlines() if "shard 0 replica 0 cannot start" in line)
    assert url in line
    _wait_for(lambda: "not restarting it" in srv.log(), "the supervisor gives the replica up")
    # The shard has not failed: its primary serves, the routers say nothing is wrong.
    assert router.set("still", "served") and router.get("still") == b"served"
    assert not os.path.exists(layout.shard_failed_path(srv.data_dir, 0))
    assert router.cluster("info")["cluster_state"] == "ok"



def test_a_replica_shard_ignores_maxmemory_until_promoted(tmp_path):
    """CONFIG SET maxmemory reaches replicas like every setting, but a replica evicts
    nothing itself (Redis' replica-ignore-maxmemory: its keyspace changes only by the
    log) and leaves the shard's OOM flag, which is its primary's, alone."""
    from durakv.shards.config import Config
    from durakv.shards.oom_flags import OomFlags
    from durakv.shards.shard import Shard

    config = Config(data_dir=str(tmp_path / "data"), shards=1).resolved()
    OomFlags(config.data_dir).set(0, True)   # the primary is over maxmemory
    shard = Shard(config, 0)
    shard.replica = object()  # type: ignore[assignment]
    shard.settings["maxmemory"] = 1
    shard.configure_memory("allkeys-random")
    assert shard.memory_limit is None
    assert OomFlags(config.data_dir).oom(0)
    shard.replica = None   # promoted
    shard.configure_memory()
    assert shard.memory_limit is not None
