"""READONLY reads on a standby on another node (issue 15): a replica on a
`--node-role replica` node serves the reads of a connection that sent READONLY, and
answers -MOVED to the shard's primary, on whichever node it runs, to writes and to
connections without READONLY (or after READWRITE), as a Redis Cluster replica does.
It shows only records etcd committed.

Two `durakv serve` trees stand for two machines and share the shard logs on a real
3-member etcd cluster (tests/etcd_support.py); the replies are compared with a real
redis-server 7.0 cluster of a master and its replica."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from conftest import DurakvServer
from durakv.shards.slots import key_slot
from proctools import free_port
from etcd_support import until
from refserver import REDIS_SERVER, RawConn, RedisRef
from test_etcd_backend import etcd_config
from test_replicas import replica_port

TTL_S = 2
WAIT_S = 30
ADVERTISED_HOST = "127.0.0.1"


def _until(fn, what: str, timeout_s: float = WAIT_S):
    return until(fn, what, timeout_s)


def two_nodes(server_factory, tmp_path, etcd_cluster, common: str = f"etcd-lease-ttl-s = {TTL_S}\n"
              "snapshotter = false\n", prefix: str = "", node_b_extra: str = "") -> tuple[DurakvServer, DurakvServer]:
    """Node a runs shard 0's primary; node b (node-role replica) its standby; both with
    the settings `common`, sharing the etcd prefix `prefix` (a new one if "")."""
    prefix = prefix or f"standby-{uuid.uuid4().hex[:8]}"
    node_a = server_factory(shards=1, extra_args=(
        "--config", etcd_config(tmp_path, etcd_cluster.endpoints, prefix, common),
        "--node-id", "a", "--advertise", f"{ADVERTISED_HOST}:7000"))
    node_b = DurakvServer(tmp_path / "node-b", shards=1, extra_args=(
        "--config", etcd_config(tmp_path, etcd_cluster.endpoints, prefix, common + "replicas = 1\n" + node_b_extra),
        "--node-id", "b", "--node-role", "replica", "--advertise", f"{ADVERTISED_HOST}:7001"))
    node_b.start(wait=False)
    return node_a, node_b


def readonly_get(port: int, key: str) -> bytes:
    """GET on a fresh READONLY connection ("" while the standby is not up yet)."""
    try:
        conn = RawConn(port)
    except OSError:
        return b""
    try:
        assert conn.call("READONLY") == b"+OK\r\n"
        return conn.call("GET", key)
    finally:
        conn.close()


def _standby_session(port: int, key: str) -> list[bytes]:
    """What a cluster client sees on a replica's port, byte for byte."""
    conn = RawConn(port)
    try:
        return [conn.call("GET", key), conn.call("READONLY"), conn.call("GET", key), conn.call("EXISTS", key),
                conn.call("SET", key, "refused"), conn.call("GET", key), conn.call("READWRITE"),
                conn.call("GET", key), conn.call("READONLY"), conn.call("GET", key)]
    finally:
        conn.close()


class RedisClusterPair:
    """A redis-server cluster: a master holding every slot and its replica."""

    def __init__(self, tmp_path) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed: the comparison needs the reference server")
        self.nodes: list[RedisRef] = []
        self.bus_ports: list[int] = []
        for name in ("master", "replica"):
            bus = free_port()
            self.bus_ports.append(bus)
            self.nodes.append(RedisRef(tmp_path / f"redis-{name}", (
                "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", str(tmp_path / f"redis-{name}.conf"))))
        master, replica = (RawConn(node.port) for node in self.nodes)
        assert master.call("CLUSTER", "ADDSLOTSRANGE", "0", "16383") == b"+OK\r\n"
        assert replica.call("CLUSTER", "MEET", "127.0.0.1", str(self.master.port),
                            str(self.bus_ports[0])) == b"+OK\r\n"
        master_id = master.value("CLUSTER", "MYID")
        assert isinstance(master_id, bytes)
        _until(lambda: master_id in replica.call("CLUSTER", "NODES"), "redis' replica to learn of its master")
        assert replica.call("CLUSTER", "REPLICATE", master_id) == b"+OK\r\n"
        _until(lambda: b"master_link_status:up" in replica.call("INFO", "replication"),
               "redis' replica to follow its master")
        master.close()
        replica.close()

    @property
    def master(self) -> RedisRef:
        return self.nodes[0]

    @property
    def replica(self) -> RedisRef:
        return self.nodes[1]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _with_address(replies: list[bytes], address: str) -> list[bytes]:
    return [reply.replace(address.encode(), b"PRIMARY") for reply in replies]


def test_standby_on_another_node_serves_readonly_reads_and_moves_the_rest_like_redis(
        etcd_cluster, server_factory, tmp_path):
    node_a, node_b = two_nodes(server_factory, tmp_path, etcd_cluster)
    reference = RedisClusterPair(tmp_path)
    try:
        primary = node_a.shard_client(0)
        primary.set("k", "v1")
        standby_port = replica_port(node_b, 0)
        _until(lambda: readonly_get(standby_port, "k") == b"$2\r\nv1\r\n",
               f"node b's standby to show the write made on node a\n{node_b.log()[-3000:]}")
        ours = _standby_session(standby_port, "k")
        # MOVED names node a's shard port (published in the leader key), not node b's own.
        primary_address = f"{ADVERTISED_HOST}:{node_a.shard_port(0)}"
        assert ours[0] == b"-MOVED %d %s\r\n" % (key_slot(b"k"), primary_address.encode()), ours
        reference.master.client().set("k", "v1")
        _until(lambda: readonly_get(reference.replica.port, "k") == b"$2\r\nv1\r\n",
               "redis' replica to show the write")
        theirs = _standby_session(reference.replica.port, "k")
        assert _with_address(ours, primary_address) == \
            _with_address(theirs, f"127.0.0.1:{reference.master.port}"), (ours, theirs)
        info = redis.Redis(port=standby_port).info("replication")
        assert (info["role"], info["master_host"], info["master_port"]) == \
            ("slave", ADVERTISED_HOST, node_a.shard_port(0)), info
        # It follows on: a later write on node a shows up on node b.
        primary.set("k", "v2")
        _until(lambda: readonly_get(standby_port, "k") == b"$2\r\nv2\r\n", "the later write on node b")
        assert primary.get("k") == b"v2"   # the MOVED went nowhere: the refused SET changed nothing
    finally:
        reference.stop()
        node_b.discard()


def test_standby_never_shows_a_write_etcd_has_not_committed(etcd_cluster, server_factory, tmp_path):
    """With two of the three etcd members killed, node a's SET cannot commit: node a holds
    it in memory (memory-first) and holds its reply; node b's standby, which applies only
    what etcd's watch delivers, does not show it. Once the quorum is back the write
    commits (or is refused) and the standby shows exactly what etcd holds."""
    node_a, node_b = two_nodes(server_factory, tmp_path, etcd_cluster)
    try:
        primary = redis.Redis(port=node_a.shard_port(0), socket_timeout=60)
        primary.set("before", "1")
        standby_port = replica_port(node_b, 0)
        _until(lambda: readonly_get(standby_port, "before") == b"$1\r\n1\r\n",
               f"node b's standby to come up\n{node_b.log()[-3000:]}")
        lost = [i for i in range(3) if i != etcd_cluster.leader_index()][:2]
        outcome: list[object] = []
        for member in lost:
            etcd_cluster.kill9(member)
        try:
            writer = threading.Thread(target=lambda: outcome.append(_reply(primary, "SET", "pending", "x")))
            writer.start()
            time.sleep(1.0)   # the SET is in node a's keyspace, its commit is refused by the lost quorum
            assert not outcome, f"node a acknowledged a write without an etcd quorum: {outcome}"
            assert readonly_get(standby_port, "pending") == b"$-1\r\n", "the standby showed an uncommitted write"
        finally:
            for member in lost:
                etcd_cluster.start_member(member)
            etcd_cluster.wait_healthy()
        writer.join(WAIT_S)
        assert outcome, "node a's SET never answered once the quorum was back"
        print(f"node a's SET after the quorum came back: {outcome[0]!r}")
        if outcome[0] is True:
            _until(lambda: readonly_get(standby_port, "pending") == b"$1\r\nx\r\n",
                   "the committed write on the standby")
        else:
            time.sleep(1.0)
            assert readonly_get(standby_port, "pending") == b"$-1\r\n", "the standby showed a refused write"
    finally:
        node_b.discard()


def _reply(client: redis.Redis, *argv) -> object:
    try:
        return client.execute_command(*argv)
    except redis.RedisError as e:
        return e

