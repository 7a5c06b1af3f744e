"""Replicas fed from the log, lease-fenced failover, replica reads (issue 14).

Each test starts a real tree with `replicas = 1` and a short log lease, so that a
failover happens in well under a second; tests check correctness, the failover
time is measured by scripts/failover_bench.py."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import LoadBalancingStrategy

from test_durability import AckedSets, write_config

LEASE_MS = 1000
WAIT_S = 20


def _start(server_factory, tmp_path: Path, shards: int = 1, **settings):
    config = write_config(tmp_path, lease_duration_ms=LEASE_MS, replicas=1, **settings)
    srv = server_factory(shards=shards, extra_args=("--config", config))
    _wait_replicas_online(srv, shards)
    return srv


def replica_port(srv, shard: int) -> int:
    """Replica 0 of `shard` (the default replica-port-base: after the shard ports)."""
    return srv.port + 1 + srv.shards + shard


def _info(client: redis.Redis) -> dict:
    return client.info("replication")


def _wait_replicas_online(srv, shards: int) -> None:
    deadline = time.monotonic() + WAIT_S
    for shard in range(shards):
        while True:
            try:
                info = _info(srv.shard_client(shard))
                if info.get("connected_slaves") == 1 and info["slave0"]["state"] == "online":
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"shard {shard}'s replica never came online:\n{srv.log()}"
            time.sleep(0.05)


def _retry(fn, what: str):
    """fn() until it answers without a connection or cluster-down error."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
            if isinstance(e, redis.ResponseError) and not isinstance(e, redis.exceptions.ClusterDownError) \
                    and "outcome" not in str(e):
                raise
            assert time.monotonic() < deadline, f"{what}: still failing: {e}"
            time.sleep(0.02)


def test_replica_serves_readonly_reads_after_wait_and_is_listed(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    primary = srv.shard_client(0)
    replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)
    primary.set("k", "v1")
    assert primary.execute_command("WAIT", 1, 5000) == 1
    # Without READONLY a replica sends every command to its primary, as Redis Cluster does.
    with pytest.raises(redis.ResponseError, match=rf"^(MOVED )?\d+ 127.0.0.1:{srv.shard_port(0)}$"):
        replica.get("k")
    assert replica.execute_command("READONLY") is True
    assert replica.get("k") == b"v1"
    with pytest.raises(redis.ResponseError, match=rf"^(MOVED )?\d+ 127.0.0.1:{srv.shard_port(0)}$"):
        replica.set("k", "v2")
    # Through the router too: WAIT counts the replicas of the shards.
    router = srv.client()
    router.set("k", "v3")
    assert router.execute_command("WAIT", 1, 5000) == 1
    assert replica.get("k") == b"v3"
    # Roles and offsets in Redis' field names on both sides.
    primary_info, replica_info = _info(primary), _info(replica)
    assert primary_info["role"] == "master" and primary_info["connected_slaves"] == 1
    assert primary_info["slave0"]["port"] == replica_port(srv, 0)
    assert primary_info["slave0"]["offset"] == primary_info["master_repl_offset"] > 0
    assert replica_info["role"] == "slave" and replica_info["master_port"] == srv.shard_port(0)
    assert replica_info["slave_repl_offset"] == primary_info["master_repl_offset"]
    assert replica.execute_command("ROLE")[0] == b"slave"
    assert primary.execute_command("ROLE")[0] == b"master"
    # CLUSTER SLOTS/NODES/SHARDS list the replica after its primary.
    slots = primary.execute_command("CLUSTER", "SLOTS")
    assert [entry[1] for entry in slots[0][2:]] == [srv.shard_port(0), replica_port(srv, 0)]
    nodes = primary.execute_command("CLUSTER", "NODES")
    nodes = nodes.decode() if isinstance(nodes, bytes) else nodes
    slave_lines = [line for line in nodes.splitlines() if " slave " in line]
    assert len(slave_lines) == 1 and f":{replica_port(srv, 0)}@" in slave_lines[0]
    replica_nodes = replica.execute_command("CLUSTER", "NODES")
    replica_nodes = replica_nodes.decode() if isinstance(replica_nodes, bytes) else replica_nodes
    assert "myself,slave" in replica_nodes
    # A cluster client reading from replicas sees the write too.
    cluster = redis.RedisCluster(host="127.0.0.1", port=srv.shard_port(0),
                                 load_balancing_strategy=LoadBalancingStrategy.RANDOM_REPLICA)
    assert cluster.get("k") == b"v3"
    cluster.close()


def test_wait_times_out_without_replicas_that_applied(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    primary = srv.shard_client(0)
    primary.set("k", "v")
    assert primary.execute_command("WAIT", 2, 100) == 1   # only one replica exists


def test_kill9_primary_under_writers_loses_no_acknowledged_write(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path, shards=2)
    sets = AckedSets(srv.port, 4, socket_timeout_s=10)
    time.sleep(0.5)
    old_pid = srv.child_pid("shard", 1)
    acked_before = len(sets.acked)
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # Writes to the shard resume on the promoted replica.
    _retry(lambda: srv.client().set("{probe}after", "1"), "a write after the failover")
    print(f"kill -9 to the first write acknowledged after it: {(time.monotonic() - killed_at) * 1000:.0f} ms")
    time.sleep(0.5)
    sets.stop(join_timeout_s=10)
    assert len(sets.acked) > acked_before
    new_pid = srv.child_pid("shard", 1)
    assert new_pid != old_pid
    client = srv.client()
    assert not sets.missing(client.mget), "an acknowledged write was lost"
    # The supervisor keeps one replica per shard: a replacement comes online.
    _wait_replicas_online(srv, 2)


def _send(sock: socket.socket, *argv: bytes) -> None:
    sock.sendall(b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv))


def test_paused_primary_acknowledges_nothing_and_serves_no_stale_read(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    primary = srv.shard_client(0)
    primary.set("k", "old")
    old_pid = srv.child_pid("shard", 0)
    # A client of the old primary's own port, connected before the pause.
    stale = socket.create_connection(("127.0.0.1", srv.shard_port(0)))
    stale.settimeout(10)
    _send(stale, b"PING")
    assert stale.recv(100) == b"+PONG\r\n"
    os.kill(old_pid, signal.SIGSTOP)
    try:
        # Sent to the paused process while it cannot run: a read and a write.
        _send(stale, b"GET", b"k")
        _send(stale, b"SET", b"k", b"stale-write")
        time.sleep(LEASE_MS * 2 / 1000)   # past its lease: the supervisor promotes the replica
        _retry(lambda: srv.client().set("k", "new"), "a write through the new primary")
        # The shard's port is served by the promoted replica (the paused process accepts nothing).
        assert _retry(lambda: srv.shard_client(0).info("server")["process_id"], "the shard port") != old_pid
    finally:
        try:
            os.kill(old_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass   # the supervisor ended it already (the next test)
    # It answers neither: its lease is gone, so it ends or was ended (the connection closes).
    received = b""
    while True:
        try:
            chunk = stale.recv(1000)
        except ConnectionResetError:   # closed with our requests unread
            break
        if not chunk:
            break
        received += chunk
    assert received == b"", f"the deposed primary answered {received!r}"
    deadline = time.monotonic() + WAIT_S
    while _alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(old_pid), "the deposed primary still runs"
    # It ended itself on waking (its lease gone), or the supervisor ended it first.
    assert "lost its log lease" in srv.log() or f"deposed primary (pid {old_pid})" in srv.log()
    assert _retry(lambda: srv.client().get("k"), "a read after the failover") == b"new"
    _wait_replicas_online(srv, 1)   # the old primary's place: a new replica


def test_primary_paused_for_ever_is_ended_once_a_replica_took_over(server_factory, tmp_path):
    """A primary that never resumes (SIGSTOP with no SIGCONT) must not keep its memory,
    sockets and log lock: the supervisor SIGKILLs it once the promoted replica holds
    the lease, and its place starts a replacement replica."""
    srv = _start(server_factory, tmp_path)
    srv.shard_client(0).set("k", "old")
    old_pid = srv.child_pid("shard", 0)
    os.kill(old_pid, signal.SIGSTOP)
    try:
        _retry(lambda: srv.client().set("k", "new"), "a write through the new primary")
        deadline = time.monotonic() + WAIT_S
        while _alive(old_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(old_pid), f"the paused, deposed primary still runs:\n{srv.log()}"
    finally:
        if _alive(old_pid):
            os.kill(old_pid, signal.SIGCONT)
    assert f"ending shard 0's deposed primary (pid {old_pid})" in srv.log()
    assert _retry(lambda: srv.shard_client(0).info("server")["process_id"], "the shard port") != old_pid
    assert _retry(lambda: srv.client().get("k"), "a read after the failover") == b"new"
    _wait_replicas_online(srv, 1)   # the old primary's place: a new replica


def test_replica_reads_never_go_back_across_a_replica_restart(server_factory, tmp_path):
    srv = _start(server_factory, tmp_path)
    primary = srv.shard_client(0)
    for i in range(50):
        primary.set("counter", i)
    assert primary.execute_command("WAIT", 1, 5000) == 1
    replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)
    replica.execute_command("READONLY")
    assert replica.get("counter") == b"49"
    os.kill(srv.child_pid("replica", "0 0"), signal.SIGKILL)
    _wait_replicas_online(srv, 1)
    replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)
    replica.execute_command("READONLY")
    assert replica.get("counter") == b"49"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone, or going between the open and the read
        return False
