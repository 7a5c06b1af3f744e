"""Primaries and replicas on the etcd log backend (issue 15): a primary answers reads
and writes only while its etcd lease is known valid (lease-fenced reads), replicas
follow the log on etcd, and a replica takes over when its primary dies.

Every test runs a real durakv tree against a real 3-member etcd cluster on loopback
(tests/etcd_support.py), with the shortest etcd lease (2 s) so lapses come quickly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid

import pytest
import redis
from redis.exceptions import ClusterDownError

from conftest import DurakvServer
from durakv.log.etcd_client import EtcdClient
from durakv.log.etcd_log import EtcdLog
from durakv.log.etcd_records import shard_prefix
from etcd_support import until
from test_durability import AckedSets
from test_etcd_backend import etcd_config, serve_once
from test_replicas import _alive, _send, _wait_replicas_online, replica_port

TTL_S = 2
WAIT_S = 30
WRITERS = 8


def _start(server_factory, tmp_path, etcd_cluster, shards: int = 1, extra: str = ""):
    prefix = f"fo-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix,
                         f"etcd-lease-ttl-s = {TTL_S}\netcd-lease-margin-ms = 500\n{extra}")
    return server_factory(shards=shards, extra_args=("--config", config)), prefix


def _until(fn, what: str, timeout_s: float = WAIT_S):
    return until(fn, what, timeout_s)


def _reply(client: redis.Redis, *argv):
    try:
        return client.execute_command(*argv)
    except redis.RedisError as e:
        return e


def _retry(fn, what: str):
    """fn() until it answers without a connection error or CLUSTERDOWN (a shard between
    primaries); redis-py names CLUSTERDOWN ClusterDownError."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, ClusterDownError) as e:
            assert time.monotonic() < deadline, f"{what}: still failing: {e}"
            time.sleep(0.02)


def _shard_of(client: redis.Redis, key: str, shards: int = 2) -> int:
    return int(client.execute_command("CLUSTER", "KEYSLOT", key)) * shards // 16384


def _down(reply) -> bool:
    """CLUSTERDOWN The cluster is down (redis-py names it ClusterDownError)."""
    return isinstance(reply, ClusterDownError)


def test_primary_without_quorum_answers_neither_reads_nor_writes(etcd_cluster, server_factory, tmp_path):
    """Two of the three etcd members die: the shard cannot renew its lease, and once
    the lease (minus the margin) ran out it answers CLUSTERDOWN to reads and writes,
    through the router and on its own port; with the members back it serves again."""
    srv, _prefix = _start(server_factory, tmp_path, etcd_cluster)
    r = srv.client()
    node = srv.shard_client(0)
    assert r.set("k", "before")
    leader = etcd_cluster.leader_index()
    killed = [leader, (leader + 1) % 3]
    for i in killed:
        etcd_cluster.kill9(i)
    try:
        cut_at = time.monotonic()
        _until(lambda: _down(_reply(r, "GET", "k")), "reads to be refused without an etcd quorum")
        print(f"reads refused {time.monotonic() - cut_at:.2f} s after etcd lost its quorum (lease TTL {TTL_S} s)")
        assert _down(_reply(node, "GET", "k"))
        assert _down(_reply(r, "SET", "k", "during"))
        # An operator still sees why: INFO's persistence section is about the server.
        assert node.info("persistence")["log_backend"] == "etcd"
    finally:
        for i in killed:
            etcd_cluster.start_member(i)
        etcd_cluster.wait_healthy()
    assert _until(lambda: _reply(r, "GET", "k") == b"before" and b"before", "the shard to serve again") == b"before"
    assert r.set("k", "after")
    assert r.get("k") == b"after"
    assert "answering CLUSTERDOWN until it is renewed" in srv.log()


def test_paused_primary_on_etcd_answers_nothing_after_another_leads(etcd_cluster, server_factory, tmp_path):
    """SIGSTOP the shard past its etcd lease; another writer campaigns (it may lead only
    once the lease expired) and appends; the shard resumes with a read and a write
    already sent to it: it answers neither with data nor OK, and ends. (No snapshotter:
    the shard's dropping of records covered by a snapshot would also find it deposed.)"""
    srv, prefix = _start(server_factory, tmp_path, etcd_cluster, extra="snapshotter = false\n")
    node = srv.shard_client(0)
    assert node.set("k", "old")
    pid = srv.child_pid("shard", 0)
    stale = socket.create_connection(("127.0.0.1", srv.shard_port(0)))
    stale.settimeout(WAIT_S)
    _send(stale, b"PING")
    assert stale.recv(100) == b"+PONG\r\n"
    os.kill(pid, signal.SIGSTOP)
    usurper = None
    try:
        usurper = EtcdLog.open(EtcdClient(etcd_cluster.endpoints), shard_prefix(prefix, 0), lease_ttl_s=TTL_S)
        started = time.monotonic()
        usurper.take_lease("usurper", take_over=False, wait_s=WAIT_S)  # waits for the lease to expire
        print(f"the usurper led {time.monotonic() - started:.2f} s after it started campaigning")
        _send(stale, b"GET", b"k")
        _send(stale, b"SET", b"k", b"stale-write")
    finally:
        os.kill(pid, signal.SIGCONT)
    received = b""
    while True:
        try:
            chunk = stale.recv(1000)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    print(f"the paused primary answered {received!r}")
    assert b"old" not in received and b"+OK" not in received, received
    # Refused or unanswered: it may answer the GET with CLUSTERDOWN and end (deposed)
    # before it reads the SET, whose connection then closes unanswered.
    assert received in (b"", b"-CLUSTERDOWN The cluster is down\r\n",
                        b"-CLUSTERDOWN The cluster is down\r\n" * 2), received
    _until(lambda: not _alive(pid), "the deposed primary to end")
    assert usurper is not None
    usurper.close()


def test_restarted_primary_waits_for_a_live_leader(etcd_cluster, server_factory, tmp_path):
    """A shard restarting while another live process leads does not depose it: it waits
    for the leader key to be free (the holder closes), then serves everything logged."""
    srv, prefix = _start(server_factory, tmp_path, etcd_cluster)
    r = srv.client()
    assert r.set("k", "v")
    pid = srv.child_pid("shard", 0)
    holder = EtcdLog.open(EtcdClient(etcd_cluster.endpoints), shard_prefix(prefix, 0), lease_ttl_s=TTL_S)
    try:
        os.kill(pid, signal.SIGSTOP)   # its lease expires: the holder may lead
        holder.take_lease("holder", take_over=False, depose_dead=True, wait_s=WAIT_S)
        os.kill(pid, signal.SIGKILL)   # the supervisor restarts the shard, which campaigns
        _until(lambda: "waiting up to" in srv.log(), "the restarted shard to wait for the leader key")
        assert holder.lease_valid()
    finally:
        holder.close()
    assert _until(lambda: _reply(r, "GET", "k") == b"v" and b"v", "the restarted shard to serve") == b"v"


def _start_with_replica(server_factory, tmp_path, etcd_cluster, shards: int = 1):
    srv, prefix = _start(server_factory, tmp_path, etcd_cluster, shards, "replicas = 1\n")
    _wait_replicas_online(srv, shards)
    return srv, prefix


def test_replica_on_etcd_follows_the_log_and_serves_readonly_reads(etcd_cluster, server_factory, tmp_path):
    srv, _prefix = _start_with_replica(server_factory, tmp_path, etcd_cluster)
    primary = srv.shard_client(0)
    for i in range(20):
        primary.set(f"k{i}", f"v{i}")
    assert primary.execute_command("WAIT", 1, 10_000) == 1
    replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)
    assert replica.execute_command("READONLY") is True
    assert [replica.get(f"k{i}") for i in range(20)] == [f"v{i}".encode() for i in range(20)]
    with pytest.raises(redis.ResponseError, match=rf"^(MOVED )?\d+ 127.0.0.1:{srv.shard_port(0)}$"):
        replica.set("k0", "refused")
    # It follows by watch: a later write shows up without a restart.
    primary.set("later", "yes")
    assert primary.execute_command("WAIT", 1, 10_000) == 1
    assert replica.get("later") == b"yes"
    assert replica.info("replication")["role"] == "slave"


def test_kill9_primary_on_etcd_under_writers_loses_no_acknowledged_write(etcd_cluster, server_factory, tmp_path):
    """8 writers through the router; kill -9 of shard 1's primary: its replica campaigns
    (the dead holder's key is taken at once), reads the log on etcd to its end and
    serves; every acknowledged write is there."""
    srv, _prefix = _start_with_replica(server_factory, tmp_path, etcd_cluster, shards=2)
    sets = AckedSets(srv.port, WRITERS, socket_timeout_s=20)
    _until(lambda: len(sets.acked) > 50, "writes to be acknowledged")
    old_pid = srv.child_pid("shard", 1)
    acked_before = len(sets.acked)
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    probe = next(f"probe{i}" for i in range(1000) if _shard_of(srv.client(), f"probe{i}") == 1)
    _retry(lambda: srv.client().set(probe, "1"), "a write to shard 1 after the failover")
    print(f"kill -9 to the first write acknowledged after it on etcd: {(time.monotonic() - killed_at) * 1000:.0f} ms")
    time.sleep(0.5)
    sets.stop(join_timeout_s=30)
    assert len(sets.acked) > acked_before
    assert "promoted to primary" in srv.log(), srv.log()[-5000:]
    assert srv.child_pid("shard", 1) != old_pid
    client = srv.client()
    assert not sets.missing(client.mget), "an acknowledged write was lost"
    _wait_replicas_online(srv, 2)   # the dead primary's place: a new replica


def test_paused_primary_with_a_replica_on_etcd_is_replaced_and_acknowledges_nothing(
        etcd_cluster, server_factory, tmp_path):
    """SIGSTOP the primary: its etcd lease runs out, the supervisor promotes the replica,
    which leads once etcd expired the old lease; writes go on through the router. The
    old primary, resumed with a read and a write sent to it, answers neither and ends."""
    srv, _prefix = _start_with_replica(server_factory, tmp_path, etcd_cluster)
    primary = srv.shard_client(0)
    primary.set("k", "old")
    old_pid = srv.child_pid("shard", 0)
    stale = socket.create_connection(("127.0.0.1", srv.shard_port(0)))
    stale.settimeout(WAIT_S)
    _send(stale, b"PING")
    assert stale.recv(100) == b"+PONG\r\n"
    os.kill(old_pid, signal.SIGSTOP)
    try:
        # Sent to the paused process while it cannot run (once a replica leads, the
        # supervisor SIGKILLs it, so later sends could meet a closed socket).
        _send(stale, b"GET", b"k")
        _send(stale, b"SET", b"k", b"stale-write")
        paused_at = time.monotonic()
        _retry(lambda: srv.client().set("k", "new"), "a write through the new primary")
        print(f"SIGSTOP of the primary to the first write acknowledged by the new one: "
              f"{time.monotonic() - paused_at:.2f} s (etcd lease TTL {TTL_S} s)")
        assert _retry(lambda: srv.shard_client(0).info("server")["process_id"], "the shard port") != old_pid
    finally:
        with contextlib.suppress(ProcessLookupError):   # the supervisor SIGKILLs a deposed, paused primary
            os.kill(old_pid, signal.SIGCONT)
    received = b""
    while True:
        try:
            chunk = stale.recv(1000)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    assert b"old" not in received and b"+OK" not in received, received
    _until(lambda: not _alive(old_pid), "the deposed primary to end")
    assert _retry(lambda: srv.client().get("k"), "a read after the failover") == b"new"
    _wait_replicas_online(srv, 1)   # the old primary's place: a new replica


def test_replica_node_takes_over_when_the_primary_node_is_killed(etcd_cluster, server_factory, tmp_path):
    """Two nodes (two `durakv serve` trees standing for two machines) share the shard
    logs on etcd: node a runs the primaries, node b (node-role replica) only replicas,
    which follow the logs by watch and serve READONLY reads. kill -9 of node a's whole
    tree under 8 writers: node b's replicas campaign, take the leader keys, read the
    logs to their end and serve through node b's router; every write node a
    acknowledged is there. Node a, started again, stands by while node b leads and
    takes every shard back when node b is killed in turn."""
    prefix = f"nodes-{uuid.uuid4().hex[:8]}"
    # No snapshotter: node a would drop records from etcd once a snapshot of its own covers
    # them, and a replica on node b starting after that has no snapshot to start from (the
    # bootstrap from the snapshot store is not done yet).
    common = f"etcd-lease-ttl-s = {TTL_S}\nsnapshotter = false\n"
    node_a = server_factory(shards=2, extra_args=(
        "--config", etcd_config(tmp_path, etcd_cluster.endpoints, prefix, common), "--node-id", "a"))
    node_b = DurakvServer(tmp_path / "node-b", shards=2, extra_args=(
        "--config", etcd_config(tmp_path, etcd_cluster.endpoints, prefix,
                                common + "replicas = 1\n"),
        "--node-id", "b", "--node-role", "replica", "--advertise", "127.0.0.1:7000"))
    try:
        node_b.start(wait=False)
        replicas_b = [redis.Redis(port=replica_port(node_b, shard), socket_timeout=10) for shard in range(2)]
        a = node_a.client()
        a.set("early", "1")
        early = replicas_b[_shard_of(a, "early")]
        _until(lambda: _reply(early, "READONLY") is True and _reply(early, "GET", "early") == b"1",
               f"node b's replica to show a write made on node a: {_reply(early, 'GET', 'early')!r} "
               f"{node_b.log()[-3000:]}")
        # No primary on node b yet: its router forwards to node a's (tests/test_etcd_nodes.py).
        assert _retry(lambda: node_b.client().get("early"), "a read via node b") == b"1"
        sets = AckedSets(node_a.port, WRITERS, socket_timeout_s=20, end_on_error=True)
        acked = sets.acked
        _until(lambda: len(acked) > 100, "writes to be acknowledged on node a")
        node_a.kill9()
        killed_at = time.monotonic()
        b = node_b.client()
        for shard in range(2):
            probe = next(f"p{i}" for i in range(1000) if _shard_of(b, f"p{i}") == shard)
            _retry(lambda probe=probe: b.set(probe, "1"), f"a write to shard {shard} on node b")
        print(f"kill -9 of node a to writes acknowledged by node b on both shards: "
              f"{(time.monotonic() - killed_at) * 1000:.0f} ms ({len(acked)} writes acknowledged by node a)")
        sets.stop(join_timeout_s=30)
        assert not sets.missing(b.mget), "a write node a acknowledged was lost"
        assert node_b.log().count("leader key is free; campaigning") >= 2
        for i in range(50):
            assert b.set(f"on-b:{i}", i)
            acked[f"on-b:{i}".encode()] = str(i).encode()
        # Node a comes back: its shards stand by while node b leads, and take over when it dies.
        node_a_again = DurakvServer(node_a.data_dir, shards=2, extra_args=node_a.extra_args)
        try:
            node_a_again.start(wait=False)
            _until(lambda: node_a_again.log().count("waiting as a standby") >= 2, "node a's shards to stand by")
            assert b.get("on-b:0") == b"0"   # node b still serves
            node_b.kill9()
            a = node_a_again.client()
            _retry(lambda: a.set("back-on-a", "1"), "a write on node a after node b died")
            assert not sets.missing(lambda chunk: _retry(lambda: a.mget(chunk), "node a's shards")), \
                "a write acknowledged by node a or b was lost"
        finally:
            node_a_again.discard()
    finally:
        node_b.discard()


def test_node_settings_are_checked_at_start(tmp_path):
    """Nodes share their logs on etcd: node-role/node-id without it, a replica node
    without replicas, a malformed --advertise and a read margin that would leave a
    primary little of its lease are each refused in one line."""
    cases = [
        (["--node-role", "replica", "--replicas", "1"], 'node-id and node-role need log-backend = "etcd"'),
        (["--config", etcd_config(tmp_path, ["http://127.0.0.1:1"], "x"), "--node-role", "replica"],
         'node-role = "replica" runs only replicas: set replicas to 1 or more'),
        (["--config", etcd_config(tmp_path, ["http://127.0.0.1:1"], "x"), "--advertise", "nohost"],
         "advertise must be HOST:PORT"),
        (["--config", etcd_config(tmp_path, ["http://127.0.0.1:1"], "x"), "--node-id", "a", "--bind", "0.0.0.0"],
         "node-id with bind '0.0.0.0': set --advertise HOST:PORT"),
        (["--config", etcd_config(tmp_path, ["http://127.0.0.1:1"], "x",
                                  "etcd-lease-ttl-s = 2\netcd-lease-margin-ms = 1500\n")],
         "etcd-lease-margin-ms (1500) must be at most half of etcd-lease-ttl-s (2 s)"),
    ]
    for args, message in cases:
        done = serve_once(args, tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and message in lines[0], (args, done.stderr)


def test_replica_on_etcd_follows_on_after_its_etcd_member_is_killed(etcd_cluster, server_factory, tmp_path):
    """kill -9 of the etcd member the replica's watch is on (the first endpoint: a client
    moves on only when its member fails): the watch resumes on another member from its
    revision, so the replica misses nothing."""
    srv, _prefix = _start_with_replica(server_factory, tmp_path, etcd_cluster)
    primary = srv.shard_client(0)
    primary.set("before", "1")
    assert primary.execute_command("WAIT", 1, 10_000) == 1
    member = 0
    etcd_cluster.kill9(member)
    try:
        for i in range(30):
            _retry(lambda i=i: primary.set(f"after:{i}", i), "a write after the etcd member died")
        assert _retry(lambda: primary.execute_command("WAIT", 1, 20_000), "WAIT") == 1
        replica = redis.Redis(port=replica_port(srv, 0), socket_timeout=10)
        replica.execute_command("READONLY")
        assert [replica.get(f"after:{i}") for i in range(30)] == [str(i).encode() for i in range(30)]
        assert replica.get("before") == b"1"
    finally:
        etcd_cluster.start_member(member)
        etcd_cluster.wait_healthy()
